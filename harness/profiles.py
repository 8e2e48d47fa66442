"""The protocol profiles, in one place: what each one runs, and what ``auto`` becomes.

A profile names a whole protocol (docs/protocol.md). It maps onto:

- a method protocol (``full`` or ``quick``): the calibration amounts and option defaults that each method
  declares per protocol (methods.base.PROTOCOLS), so a new profile changes no method;
- a calibration source;
- the metrics' sizes, which each metric gives for the profile (``Metric.default_config``);
- the recovery settings (harness.recovery.config).

``auto`` is what this machine can run, decided once, before anything loads:

- profile ``auto``: ``paper`` where the run uses a CUDA device, ``cpu-quick`` on a CPU;
- a data source ``auto`` (a bench's calibration): the profile's;
- where a command has no profile for its data (``prunebench prune``'s calibration, ``eval``'s dataset), the data
  of ``paper`` where the hub answers and of ``cpu-quick`` (embedded, offline) where it does not:
  ``data_profile``.
"""

from __future__ import annotations

import logging

from harness.errors import PrunebenchError
from methods.base import ProtocolName

log = logging.getLogger(__name__)

PROFILES: tuple[str, ...] = ("paper", "cpu-quick")
METHOD_PROTOCOL: dict[str, ProtocolName] = {"paper": "full", "cpu-quick": "quick"}
CALIBRATION_SOURCE: dict[str, str] = {"paper": "c4", "cpu-quick": "enwiki-sample"}


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise PrunebenchError(f"unknown profile '{profile}'; known: {', '.join(PROFILES)}")
    return profile


def method_protocol(profile: str) -> ProtocolName:
    return METHOD_PROTOCOL[check_profile(profile)]


def calibration_source(profile: str) -> str:
    return CALIBRATION_SOURCE[check_profile(profile)]


def resolve_profile(profile: str, device: str) -> str:
    """``auto``: the paper's protocol where ``device`` runs on CUDA here, the quick one on a CPU."""
    if profile != "auto":
        return check_profile(profile)
    from harness.devices import cuda_unavailable_reason

    return "paper" if device != "cpu" and cuda_unavailable_reason() is None else "cpu-quick"


def data_profile() -> str:
    """The profile whose data a command without one reads for ``auto``: the paper's where the hub answers."""
    from harness.hub import hub_reachable

    chosen = "paper" if hub_reachable() else "cpu-quick"
    log.debug("data for 'auto': the %s profile's", chosen)
    return chosen


def resolve_calibration_source(source: str) -> str:
    return calibration_source(data_profile()) if source == "auto" else source
