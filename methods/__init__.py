"""prunebench's pruning algorithms: pure functions of a model (through an architecture adapter) and
calibration token ids. The registry maps method names to implementations, imported on first use."""

from methods.registry import expand_method_name, get_method, method_names, register_method, unregister_method

__all__ = ["expand_method_name", "get_method", "method_names", "register_method", "unregister_method"]
