"""Which device a run uses, and, when CUDA is not used, why.

torch from PyPI is a CUDA build that needs a recent NVIDIA driver (torch 2.13's CUDA 13.0 needs 580 or newer).
On an older driver ``torch.cuda.is_available()`` is merely False, and ``auto`` would quietly become a float32
CPU run: a 7B model as 27 GB of CPU work. So the cause is named: in a warning when a model other than the
embedded ones falls back to the CPU, in the bench header, in each result's environment, and in the one line
that refuses ``--device cuda`` where no GPU is usable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from harness.errors import PrunebenchError

# The oldest Linux driver each CUDA major release runs on (NVIDIA's minor-version compatibility: a wheel built
# for any 12.x runs from 525.60.13 on; 13.x needs 580).
MIN_DRIVER: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
DRIVER_FILE = Path("/proc/driver/nvidia/version")


def driver_version(path: Path = DRIVER_FILE) -> str | None:
    """The loaded NVIDIA kernel driver's version (None: no driver loaded, or not Linux)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for [\w-]+)?\s+(\d+(?:\.\d+)+)", text)
    return found.group(1) if found else None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def cuda_absence(torch_version: str, torch_cuda: str | None, driver: str | None, visible: str | None) -> str:
    """Why CUDA is not usable, in words, from what is known without it: torch's build, the NVIDIA driver
    loaded, and ``CUDA_VISIBLE_DEVICES``."""
    if torch_cuda is None:
        return f"torch {torch_version} is a build without CUDA"
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    if driver is None:
        return f"no NVIDIA driver is loaded (torch {torch_version} is built for CUDA {torch_cuda})"
    needed = MIN_DRIVER.get(_version_tuple(torch_cuda)[0])
    if needed and _version_tuple(driver) < _version_tuple(needed):
        return (f"torch {torch_version} is built for CUDA {torch_cuda}, which needs NVIDIA driver >= "
                f"{needed.split('.')[0]}, and this machine has driver {driver} (install a torch built for an older "
                "CUDA, or a newer driver)")
    return f"no CUDA device is usable (driver {driver}, torch {torch_version} built for CUDA {torch_cuda})"


def cuda_unavailable_reason() -> str | None:
    """None where CUDA is usable; otherwise why not (one phrase)."""
    if torch.cuda.is_available():
        return None
    return cuda_absence(torch.__version__, torch.version.cuda, driver_version(),
                        os.environ.get("CUDA_VISIBLE_DEVICES"))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is the first visible GPU where CUDA is usable and the CPU otherwise; a CUDA device that is not
    usable here is refused in one line, with the cause."""
    if device == "auto":
        return torch.device("cpu" if cuda_unavailable_reason() else "cuda")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise PrunebenchError(f"unknown device '{device}'; choose auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        reason = cuda_unavailable_reason()
        if reason:
            raise PrunebenchError(f"device '{device}' asked for, but CUDA is not usable here: {reason}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise PrunebenchError(f"device '{device}' asked for, but {count} CUDA device(s) are visible here "
                                  f"(cuda:0 to cuda:{count - 1})")
    return dev


def cpu_fallback(device: str) -> str | None:
    """Why ``device`` runs on the CPU when it was left to ``auto``; None when it was chosen, or CUDA is used."""
    return cuda_unavailable_reason() if device == "auto" else None


def device_identity(device: torch.device) -> str:
    """The processor a device computes on (what a pruned-model cache key names): its kind and model. The same
    code and settings can choose other structures on another processor (torch.topk's order among ties)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        from harness.env import cpu_model

        return f"cpu: {cpu_model()}"
    return device.type
