"""Method names -> implementations. Strings, so that naming a method imports only that method.

A method of prunebench's own is one file in methods/ and one line in :data:`METHODS`. A method kept
elsewhere is added without editing this package: :func:`register_method` in the running process, or
``PRUNEBENCH_METHODS=name=module:Class[,name=module:Class...]`` in the environment, which also reaches
the process every bench cell runs in (docs/methods.md, "Adding a method").
"""

import os
import re
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

ENV_VAR = "PRUNEBENCH_METHODS"
# A name ends up in cell ids and file names; 'all' and 'every' are the method groups below.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_RESERVED = ("all", "every")
_registered: dict[str, str] = {}


# `--methods all`: the comparison of docs/methods.md (and of the paper), each baseline in the form docs/methods.md
# defines. The whole-block forms of BlockPruner and EvoPress (the `blockpruner` / `evopress` flags of the
# authors' later command line; at their commit 88ab660 those flags are the sub-block forms, as here) are run
# by name, or with `--methods every`.
COMPARISON: tuple[str, ...] = ("dense", "2ssp", "shortgpt", "window", "slicegpt", "blockpruner", "evopress")


def _check_entry(name: str, target: str, where: str) -> None:
    if not _NAME.match(name) or name in _RESERVED:
        raise MethodError(f"{where}: '{name}' is not a usable method name (letters, digits, . _ + -; not all or every)")
    if name in METHODS:
        raise MethodError(f"{where}: '{name}' is a built-in method and cannot be replaced")
    if not _TARGET.match(target):
        raise MethodError(f"{where}: method '{name}' names '{target}', not module:Class")


def environment_methods() -> dict[str, str]:
    """The methods named in ``PRUNEBENCH_METHODS`` (read at every look-up, so a change applies at once)."""
    found: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in os.environ.get(ENV_VAR, "").split(","))):
        name, sep, target = (part.strip() for part in entry.partition("="))
        if not sep:
            raise MethodError(f"{ENV_VAR}: '{entry}' is not name=module:Class")
        _check_entry(name, target, ENV_VAR)
        found[name] = target
    return found


def added_methods() -> dict[str, str]:
    """Methods from outside this package (environment, then registered in this process): name -> module:Class."""
    env = environment_methods()
    for name, target in _registered.items():
        if env.get(name, target) != target:
            raise MethodError(f"method '{name}' is registered as {target} but {ENV_VAR} names {env[name]}")
    return {**env, **_registered}


def register_method(name: str, target: str | type[PruningMethod]) -> None:
    """Make ``name`` a method of this process: ``target`` is a PruningMethod subclass or its 'module:Class'.

    The class must be importable by that path (bench cells import it in their own process, given the same
    name and path in ``PRUNEBENCH_METHODS``), and its ``name`` attribute must be ``name``.
    """
    if isinstance(target, type):
        target = f"{target.__module__}:{target.__qualname__}"
    _check_entry(name, target, "register_method")
    if _registered.get(name, target) != target:
        raise MethodError(f"register_method: '{name}' is already registered as {_registered[name]}")
    _registered[name] = target
    try:
        get_method(name)  # an unimportable path or a mismatched name fails here, not in a cell
    except BaseException:
        del _registered[name]
        raise


def unregister_method(name: str) -> None:
    """Undo :func:`register_method` (built-ins and ``PRUNEBENCH_METHODS`` entries stay)."""
    if _registered.pop(name, None) is None:
        raise MethodError(f"unregister_method: '{name}' was not registered by register_method")


def _table() -> dict[str, str]:
    return {**METHODS, **added_methods()}


def method_names(include_reference: bool = True) -> list[str]:
    """Every registered name; without the reference row (the dense model) imports each method to ask it."""
    return [n for n in _table() if include_reference or not get_method(n).reference]


def expand_method_name(name: str) -> list[str]:
    """'all' (the comparison), 'every' (every registered method) or one method's name."""
    if name == "all":
        return list(COMPARISON)
    if name == "every":
        return method_names()
    return [name]


def get_method(name: str) -> PruningMethod:
    table = _table()
    target = table.get(name)
    if target is None:
        raise MethodError(f"unknown method '{name}'; known: {', '.join(table)}")
    module_name, cls_name = target.split(":")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as err:
        # A path that names no module is the user's to fix (one line); a module that fails inside stays loud.
        if err.name is None or not f"{module_name}.".startswith(f"{err.name}."):
            raise
        raise MethodError(f"method '{name}': no module '{module_name}' on the path ({target})") from err
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, PruningMethod)) or getattr(cls, "name", None) != name:
        raise MethodError(f"method '{name}': {target} is not a PruningMethod subclass whose name is '{name}'")
    return cls()
