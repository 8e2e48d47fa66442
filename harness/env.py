"""The environment a result was measured in, captured into every result file."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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


# The code a result's numbers come from: prunebench's own sources (package data included), by path and content.
SOURCE_DIRS = ("harness", "methods")
SOURCE_SUFFIXES = (".py", ".yaml", ".json")


def _digest(files: list[tuple[str, bytes | None]]) -> str:
    digest = hashlib.sha256()
    for path, data in sorted(files, key=lambda f: f[0]):
        if path.endswith(SOURCE_SUFFIXES):
            size = -1 if data is None else len(data)  # a tracked file deleted in the working tree
            digest.update(f"{path}\0{size}\0".encode() + (data or b""))
    return digest.hexdigest()


def _git(root: Path, *args: str, stdin: bytes | None = None) -> bytes | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], input=stdin, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.debug("git %s failed: %s", args[0], err)
        return None
    return done.stdout if done.returncode == 0 else None


def source_digest(root: Path | None = None) -> str:
    """sha256 of the sources this process runs: in a checkout the tracked files as they are on disk (uncommitted
    edits included), elsewhere (a container's copy) every source file."""
    root = root or Path(__file__).resolve().parent.parent
    listed = _git(root, "ls-files", "-z", "--", *SOURCE_DIRS) if (root / ".git").exists() else None
    if listed is not None:
        names = [n for n in listed.decode().split("\0") if n]
    else:
        names = [p.relative_to(root).as_posix() for d in SOURCE_DIRS for p in (root / d).rglob("*") if p.is_file()
                 and "__pycache__" not in p.parts]
    return _digest([(n, (root / n).read_bytes() if (root / n).is_file() else None) for n in names])


@functools.cache
def commit_source_digest(commit: str, root: Path | None = None) -> str | None:
    """:func:`source_digest` of a commit's tree, read from the repository at hand (None: it does not hold it)."""
    root = root or Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    tree = _git(root, "ls-tree", "-r", "-z", commit, "--", *SOURCE_DIRS)
    if tree is None:
        return None
    entries = [e.split("\t", 1) for e in tree.decode().split("\0") if e]
    blobs = [(path, meta.split()[2]) for meta, path in entries if meta.split()[1] == "blob"]
    out = _git(root, "cat-file", "--batch", stdin="".join(f"{sha}\n" for _, sha in blobs).encode())
    if out is None:
        return None
    files, pos = [], 0
    for path, _ in blobs:  # each object: "<sha> blob <size>\n<bytes>\n"
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        files.append((path, out[header_end + 1 : header_end + 1 + size]))
        pos = header_end + 1 + size + 1
    return _digest(files)


def ran_committed_sources(environment: dict[str, Any]) -> bool:
    """Whether the code a result ran is exactly its recorded commit's: a clean tree, or a tree whose changes lay
    only outside the sources (a run published into results/ before the next bench, an edited doc), which the
    recorded source digest proves by equalling the commit's. False where that cannot be shown."""
    record = environment.get("prunebench") or {}
    git, recorded = record.get("git"), record.get("source_sha256")
    if not isinstance(git, dict) or not git.get("commit"):
        return False
    if git.get("dirty") is False:
        return True
    return recorded is not None and commit_source_digest(str(git["commit"])) == recorded


def provenance_problem(environment: dict[str, Any]) -> str | None:
    """Where a result's record of its code contradicts the repository: it says it ran a clean tree of a commit
    this repository holds, but the sources it ran differ from that commit's."""
    record = environment.get("prunebench") or {}
    git, recorded = record.get("git"), record.get("source_sha256")
    if not isinstance(git, dict) or git.get("dirty") is not False or not git.get("commit"):
        return None
    if recorded is None:
        return None  # recorded before results kept their source digest: nothing to check against
    expected = commit_source_digest(str(git["commit"]))
    if expected is not None and expected != recorded:
        return (f"it says it ran a clean tree of commit {str(git['commit'])[:10]}, but the sources it ran differ "
                "from that commit's")
    return None


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
        "prunebench": {"version": __version__, "git": git_commit(), "source_sha256": source_digest()},
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
