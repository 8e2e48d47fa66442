"""Replay of method-specific structural edits (beyond the adapter's own remove/keep operations).

A method whose surgery the adapter cannot express (SliceGPT's rotated, narrower residual stream)
logs an op with its own name; reloading a checkpoint dispatches it here. The table maps op names to
``module:function`` strings so that loading a checkpoint imports only the method it needs.
"""

from importlib import import_module
from typing import Any

from methods.errors import MethodError

CUSTOM_OPS: dict[str, str] = {
    "keep_ffn_channels": "methods.twossp:replay_channels",
    "slicegpt": "methods.slicegpt:replay",
}


def replay_custom_op(adapter: Any, op: dict[str, Any]) -> None:
    target = CUSTOM_OPS.get(op["op"])
    if target is None:
        raise MethodError(f"unknown surgery op '{op['op']}' in checkpoint manifest (known: {sorted(CUSTOM_OPS)})")
    module, func = target.split(":")
    getattr(import_module(module), func)(adapter, op)
