"""pytest fixtures of the local hub: import ``local_hub`` (and ``hub_run``) into a test module to use them.

``local_hub`` builds the repositories once into ``cache_dir()/localhub/v<FIXTURE_VERSION>`` (reused across runs)
and serves them for the session. The libraries under test read HF_ENDPOINT / HF_HUB_OFFLINE when they are
imported, and tests/conftest.py sets HF_HUB_OFFLINE=1 for the test process, so library calls run in
subprocesses through ``hub_run``, with the environment pointing at the stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.localhub.fixtures import FIXTURE_VERSION, build_hub
from tests.localhub.server import LocalHub

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULT = "LOCALHUB-RESULT "


def hub_env(hub: LocalHub | str, hf_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a process that uses ``hub`` (a LocalHub, or an endpoint URL) as its Hugging Face hub."""
    env = dict(os.environ)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    env.update(
        HF_ENDPOINT=hub if isinstance(hub, str) else hub.endpoint, HF_HOME=str(hf_home), HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def local_hub() -> Iterator[LocalHub]:
    from filelock import FileLock

    from harness.paths import cache_dir

    root = cache_dir() / "localhub" / f"v{FIXTURE_VERSION}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        repos = build_hub(root)
    hub = LocalHub(repos).start()
    try:
        yield hub
    finally:
        hub.stop()


def run_in_hub(hub: LocalHub, code: str, hf_home: Path, timeout: float = 120, **env: str) -> Any:
    """Run ``code`` in a fresh Python against ``hub`` and return what it printed as
    ``print(RESULT + json.dumps(x))``; a failed run raises AssertionError with its output."""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=hub_env(hub, hf_home, **env), cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"subprocess failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1][len(RESULT) :])


@pytest.fixture
def hub_run(local_hub: LocalHub, tmp_path: Path) -> Callable[..., Any]:
    """``hub_run(code, timeout=..., **env)``: ``run_in_hub`` with its own empty HF_HOME unless ``HF_HOME`` is given."""

    def run(code: str, timeout: float = 120, **env: str) -> Any:
        home = Path(env.pop("HF_HOME", tmp_path / "hf-home"))
        return run_in_hub(local_hub, code, home, timeout=timeout, **env)

    return run
