"""Method names -> implementations. Strings, so that naming a method imports only that method."""

from importlib import import_module

from methods.base import PruningMethod
from methods.errors import MethodError

METHODS: dict[str, str] = {
    "dense": "methods.dense:Dense",
    "2ssp": "methods.twossp:TwoSSP",
    "shortgpt": "methods.shortgpt:ShortGPT",
    "window": "methods.window:Window",
    "blockpruner": "methods.blockpruner:BlockPruner",
    "blockpruner-block": "methods.blockpruner:BlockPrunerBlock",
    "evopress": "methods.evopress:EvoPress",
    "evopress-block": "methods.evopress:EvoPressBlock",
    "slicegpt": "methods.slicegpt:SliceGPT",
}


# `--methods all`: the comparison of docs/methods.md (and of the paper), each baseline in the form docs/methods.md
# defines. The whole-block forms of BlockPruner and EvoPress (the authors' `blockpruner` / `evopress`
# flags) are run by name, or with `--methods every`.
COMPARISON: tuple[str, ...] = ("dense", "2ssp", "shortgpt", "window", "slicegpt", "blockpruner", "evopress")


def method_names(include_dense: bool = True) -> list[str]:
    return [n for n in METHODS if include_dense or n != "dense"]


def expand_method_name(name: str) -> list[str]:
    """'all' (the comparison), 'every' (every registered method) or one method's name."""
    if name == "all":
        return list(COMPARISON)
    if name == "every":
        return method_names()
    return [name]


def get_method(name: str) -> PruningMethod:
    target = METHODS.get(name)
    if target is None:
        raise MethodError(f"unknown method '{name}'; known: {', '.join(METHODS)}")
    module, cls = target.split(":")
    return getattr(import_module(module), cls)()
