"""What a bench cell's configuration hash covers, and the settings added after results were first recorded.

A cell's configuration hash names what its numbers depend on: a bench resumes a result whose hash equals its
cell's, and the leaderboard shares a table between results only when their protocol (the settings that are not
a cell's own) hashes alike. Settings are added over time. Each one added after results were first written is
listed with its *earlier value*: the value that computes what the code before it computed. Two rules follow:

- at its earlier value a setting is left out of the hash, so that every hash recorded before the setting
  existed stays valid (a bench resumes those results, the leaderboard keeps them in their table);
- a result recorded without the setting is given its earlier value when it is read (harness.results,
  schema 2 -> 3), never today's default, so that ``repro`` re-runs what was run. A setting missing from a
  record that has no earlier value makes the record unusable (one line), rather than silently filled.

A new setting is one line: here for a harness setting, in the method's ``earlier_options`` for a method option
(methods.base.PruningMethod), in the metric's ``earlier_settings`` for a metric setting (a value, or a function of
the metric's section).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from typing import Any

from harness.metrics.registry import METRICS
from methods import get_method
from methods.errors import MethodError

Config = dict[str, Any]


def _draw_before_it(config: Config) -> str:
    # Before calibration draws were selectable, seed 0 took the first chunks and any other seed drew random ones.
    return "fixed" if config.get("seed", 0) == 0 else "random-chunks"


# path in a cell's configuration -> its earlier value, or a function of the configuration that gives it
SETTINGS_ADDED_LATER: dict[str, Any] = {
    "numerics": "exact",
    "tokenizer": "fast",
    "export": [],
    "calibration.construction": "joined",
    "calibration.draw": _draw_before_it,
    "recovery": None,  # off: no recovery fine-tuning after pruning (harness.recovery)
}

# How a cell is run and where it came from, not what it computes: never hashed. ``plan`` follows from the hashed
# settings (the driver's plan for the cell, handed over so that the cell does not make it again).
NOT_HASHED = frozenset({"reprune", "export", "run", "plan"})
# A cell's own settings; everything else is the protocol that the rows of one leaderboard table share.
PER_CELL = frozenset({"id", "method", "variant", "sparsity", "seed", "method_options", "calibration", "cache_pruned",
                      "prunebench_version"})


def canonical_hash(obj: Any, length: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# Metrics that run only when asked for (``Metric.extra``: the engine). While off, their config is no part of a
# cell's hash; a record made before one existed did not run it, and reads as having it off.
EXTRAS = frozenset(name for name, metric in METRICS.items() if metric.extra)


def _method_options(config: Config) -> dict[str, Any]:
    """The earlier values of the options of the config's method (none when the method is not known here)."""
    try:
        return dict(get_method(str(config.get("method"))).earlier_options)
    except MethodError:  # a method added elsewhere and not registered in this process: nothing to fill or drop
        return {}


def earlier_values(config: Config) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, earlier value) of every setting added later that applies to ``config``."""
    for path, value in SETTINGS_ADDED_LATER.items():
        yield tuple(path.split(".")), value(config) if callable(value) else value
    for key, value in _method_options(config).items():
        yield ("method_options", key), value
    for name, metric in METRICS.items():
        for key, value in metric.earlier_settings.items():
            yield (name, key), value(config.get(name) or {}) if callable(value) else value


def _get(config: Config, path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _parent(config: Config, path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = config
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def hashed_config(config: Config) -> Config:
    """The part of a cell's configuration (a CellSpec as JSON, or a result's ``config``) its hash covers."""
    out = copy.deepcopy({k: v for k, v in config.items() if k not in NOT_HASHED})
    for name in EXTRAS:
        if not (out.get(name) or {}).get("enabled", False):
            out.pop(name, None)
    for path, earlier in earlier_values(config):
        found, value = _get(out, path)
        parent = _parent(out, path)
        if found and value == earlier and parent is not None:
            del parent[path[-1]]
    return out


def config_hash(config: Config) -> str:
    return canonical_hash(hashed_config(config))


def protocol_config(config: Config) -> Config:
    """What the rows of one leaderboard table share: the hashed configuration less each cell's own settings."""
    return {k: v for k, v in hashed_config(config).items() if k not in PER_CELL}


def complete(config: Config) -> tuple[Config, list[str], list[str]]:
    """``config`` with every setting added later that it lacks given its earlier value; the paths filled; and the
    settings it lacks that have no earlier value (a record that cannot say what it ran).

    An extra metric a record lacks is filled with its default config (off). Today's defaults are never used:
    they are not what an older record ran with.
    """
    out = copy.deepcopy(config)
    filled = []
    for path, earlier in earlier_values(config):
        if path[0] in EXTRAS and path[0] not in out:
            continue  # filled whole below
        found, _ = _get(out, path)
        parent = _parent(out, path)
        if not found and parent is not None:
            parent[path[-1]] = copy.deepcopy(earlier)
            filled.append(".".join(path))
    for name in EXTRAS:
        if name not in out:
            out[name] = METRICS[name].config_type().model_dump(mode="json")
            filled.append(name)
    return out, filled, _unknown(out)


def _unknown(config: Config) -> list[str]:
    """Option and metric settings of today that ``config`` lacks and that declare no earlier value."""
    missing = []
    try:
        fields = get_method(str(config.get("method"))).Options.model_fields
    except MethodError:
        fields = {}
    options = config.get("method_options")
    if isinstance(options, dict):
        missing += [f"method_options.{k}" for k in fields if k not in options]
    for name, metric in METRICS.items():
        if isinstance(config.get(name), dict):
            missing += [f"{name}.{k}" for k in metric.config_type.model_fields if k not in config[name]]
    return missing
