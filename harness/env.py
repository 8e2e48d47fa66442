"""The environment a result was measured in, captured into every result file."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "datasets", "lm_eval", "accelerate", "tokenizers", "safetensors", "numpy",
            "pydantic", "typer", "gguf", "gensim")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit(repo: Path | None = None) -> dict[str, Any] | None:
    """The commit of the prunebench checkout this code runs from (None when not a checkout)."""
    root = repo or Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        commit = os.environ.get("PRUNEBENCH_GIT_COMMIT")  # set by the container build: <sha>[-dirty]
        if not commit or commit == "unknown":
            return None
        return {"commit": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty")}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def capture() -> dict[str, Any]:
    import torch

    from harness import __version__

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}"})
    return {
        "prunebench": {"version": __version__, "git": git_commit()},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "packages": {p: _version(p) for p in PACKAGES},
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads(),
        },
        "cpu": {"model": cpu_model(), "cores": os.cpu_count()},
        "gpus": gpus,
        "container": {
            "image": os.environ.get("PRUNEBENCH_IMAGE"),
            "digest": os.environ.get("PRUNEBENCH_IMAGE_DIGEST"),
        } if os.environ.get("PRUNEBENCH_IMAGE") else None,
    }


def fingerprint(env: dict[str, Any]) -> str:
    """What makes timings comparable: the hardware and the software stack, not the host name."""
    gpu = ",".join(g["name"] for g in env.get("gpus", [])) or "cpu"
    return f"{env.get('cpu', {}).get('model')}|{gpu}|torch {env.get('torch', {}).get('version')}"
