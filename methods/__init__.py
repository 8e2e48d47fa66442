"""prunebench's pruning algorithms: each edits a model in place, only through its architecture adapter,
from calibration token ids. The registry maps method names to implementations, imported on first use."""

from methods.registry import expand_method_name, get_method, method_names, register_method, unregister_method

__all__ = ["expand_method_name", "get_method", "method_names", "register_method", "unregister_method"]
