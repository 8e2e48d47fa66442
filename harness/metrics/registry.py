"""The metrics every bench cell can measure, in the order they run. Adding a metric: its module and one line here.

Each metric's config becomes a field of the bench configuration and of a cell's spec, and its result a
field of the cell's result, under the metric's name (see ``harness.bench.config`` and ``harness.results``).
"""

from __future__ import annotations

from types import MappingProxyType

from harness.metrics.base import Metric
from harness.metrics.downstream import DownstreamMetric
from harness.metrics.engine import EngineMetric
from harness.metrics.latency import LatencyMetric
from harness.metrics.perplexity import PerplexityMetric
from harness.metrics.qualitative import QualitativeMetric

# Latency first: it times the dense model before anything else warms or fragments memory. The engine
# last: llama.cpp's threads (its own OpenMP pool) run after every PyTorch measurement, never beside one.
METRICS: MappingProxyType[str, Metric] = MappingProxyType({
    m.name: m for m in (LatencyMetric(), PerplexityMetric(), DownstreamMetric(), QualitativeMetric(), EngineMetric())
})
