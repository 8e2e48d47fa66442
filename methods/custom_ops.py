"""Replay of method-specific structural edits (beyond the adapter's own remove/keep operations).

A method whose surgery the adapter cannot express (SliceGPT's rotated, narrower residual stream)
logs an op with its own name; reloading a checkpoint hands ``REPLAYERS`` to ``ModelAdapter.replay``.
The table maps op names to ``module:function`` strings so that loading a checkpoint imports only the
method it needs, and so that the adapter, which every method builds on, never imports a method.
"""

from collections.abc import Iterator, Mapping
from importlib import import_module

from methods.arch import Replayer

CUSTOM_OPS: dict[str, str] = {
    "keep_ffn_channels": "methods.twossp:replay_channels",
    "slicegpt": "methods.slicegpt:replay",
}


class _LazyReplayers(Mapping[str, Replayer]):
    """Op name -> replayer, importing the method's module when its op is first looked up."""

    def __getitem__(self, name: str) -> Replayer:
        module, func = CUSTOM_OPS[name].split(":")
        return getattr(import_module(module), func)

    def __iter__(self) -> Iterator[str]:
        return iter(CUSTOM_OPS)

    def __len__(self) -> int:
        return len(CUSTOM_OPS)


REPLAYERS: Mapping[str, Replayer] = _LazyReplayers()
