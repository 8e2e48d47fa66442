"""The metrics every bench cell can measure, in the order they run. Adding a metric: its module and one line here,
or, for a metric kept elsewhere, ``PRUNEBENCH_METRICS=module:Class[,module:Class...]`` in the environment.

Each metric's config becomes a field of the bench configuration and of a cell's spec, and its result a
field of the cell's result, under the metric's name (see ``harness.bench.config`` and ``harness.results``).
Those types are built from this registry when it is imported, so a metric from the environment is read once,
then; the processes a bench starts inherit the environment, and with it the metric (docs/protocol.md,
"Adding a metric").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from importlib import import_module
from types import MappingProxyType

from harness.errors import PrunebenchError
from harness.metrics.base import Metric
from harness.metrics.downstream import DownstreamMetric
from harness.metrics.engine import EngineMetric
from harness.metrics.latency import LatencyMetric
from harness.metrics.perplexity import PerplexityMetric
from harness.metrics.qualitative import QualitativeMetric

ENV_VAR = "PRUNEBENCH_METRICS"
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a field of the bench file and of every result


def environment_metrics(taken: set[str]) -> list[Metric]:
    """The metrics ``PRUNEBENCH_METRICS`` names, each checked: importable, a Metric, a new name."""
    out: list[Metric] = []
    for target in filter(None, (e.strip() for e in os.environ.get(ENV_VAR, "").split(","))):
        if not _TARGET.match(target):
            raise PrunebenchError(f"{ENV_VAR}: '{target}' is not module:Class")
        module, _, cls = target.partition(":")
        try:
            found = getattr(import_module(module), cls)
        except (ImportError, AttributeError) as err:
            raise PrunebenchError(f"{ENV_VAR}: cannot import {target}: {err}") from err
        if not (isinstance(found, type) and issubclass(found, Metric)):
            raise PrunebenchError(f"{ENV_VAR}: {target} is not a subclass of harness.metrics.base.Metric")
        metric = found()
        name = getattr(metric, "name", "")
        if not _NAME.match(name) or name in taken:
            raise PrunebenchError(f"{ENV_VAR}: {target} is named {name!r}, which is "
                                  f"{'taken' if name in taken else 'not lower-case letters, digits and _'}")
        taken.add(name)
        out.append(metric)
    return out


def _registry() -> MappingProxyType[str, Metric]:
    # Latency first: it times the dense model before anything else warms or fragments memory. The engine
    # last: llama.cpp's threads (its own OpenMP pool) run after every PyTorch measurement, never beside one.
    own: list[Metric] = [LatencyMetric(), PerplexityMetric(), DownstreamMetric(), QualitativeMetric()]
    taken = {m.name for m in own} | {EngineMetric.name}
    return MappingProxyType({m.name: m for m in (*own, *environment_metrics(taken), EngineMetric())})


METRICS: MappingProxyType[str, Metric] = _registry()


def metric_fields(own: Iterable[str], what: str) -> list[str]:
    """The metric names, to become fields of ``what`` beside its ``own``: a metric named as one of those (a
    setting such as ``model``) would shadow it, and is refused."""
    clash = sorted(set(METRICS) & set(own))
    if clash:
        raise PrunebenchError(f"{ENV_VAR}: a metric is named {clash[0]!r}, which is a field of {what} already")
    return list(METRICS)
