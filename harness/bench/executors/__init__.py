"""Executors run cells in isolation: a process each (local), a container each (docker), a task each (ray).

An executor gets the pending cells and an event callback; it must leave, for every cell it ran, a
result file: the one the cell wrote, or a failed one written by ``base.record_failure`` when the cell
could not (crash, signal, out of memory, time limit, engine error). Ctrl-C stops the running cells and
raises ``BenchInterrupted``.

``base`` holds what they share; each executor is a module of its own, imported only when chosen (the
docker and ray executors need their SDKs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from harness.bench.executors.base import BenchInterrupted, CellJob, Event, Executor, OnEvent


def _local(options: dict[str, Any]) -> Executor:
    from harness.bench.executors.local import LocalExecutor

    return LocalExecutor(**options)


def _docker(options: dict[str, Any]) -> Executor:
    from harness.bench.executors.docker import DockerExecutor

    return DockerExecutor(**options)


def _ray(options: dict[str, Any]) -> Executor:
    from harness.bench.executors.ray import RayExecutor

    return RayExecutor(**options)


EXECUTORS: Mapping[str, Callable[[dict[str, Any]], Executor]] = MappingProxyType(
    {"local": _local, "docker": _docker, "ray": _ray})


def make_executor(name: str, options: dict[str, Any]) -> Executor:
    factory = EXECUTORS.get(name)
    if factory is None:
        raise ValueError(f"unknown executor '{name}'")
    return factory(options)


__all__ = ["EXECUTORS", "BenchInterrupted", "CellJob", "Event", "Executor", "OnEvent", "make_executor"]
