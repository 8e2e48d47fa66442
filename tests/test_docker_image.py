"""The CPU Docker image builds and runs the CPU torch build as the non-root user.

Needs a Docker engine: ``docker/ensure-engine.sh`` provides one where it can (root on Debian: it
installs docker.io and starts dockerd); otherwise the test is skipped with the reason. The first run
bootstraps the base image and builds (minutes); later runs reuse the cached layers (seconds).
Deselect with ``-m "not docker"``.
"""

from __future__ import annotations

import subprocess

import pytest

EXPECTED_TORCH = "2.13.0+cpu"

# Runs inside the container: the heavy imports, then one line of facts for the assertions below.
PROBE = """
import os, shutil, tempfile
import torch, transformers, lm_eval, harness, methods
with tempfile.NamedTemporaryFile(dir=os.environ["PRUNEBENCH_CACHE"]):
    pass  # the cache directory is writable by the image's user
print("PROBE", torch.__version__, os.getuid(), os.getgid(), os.environ["HOME"], bool(shutil.which("prunebench")))
"""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.mark.docker
def test_cpu_image_imports_the_stack_with_cpu_torch_as_uid_1000(cpu_image):
    image_id = cpu_image

    # --network none: the image must be complete; nothing may be fetched at run time.
    run = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image_id, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"container failed:\n{_tail(run.stderr)}"
    probe = [line for line in run.stdout.splitlines() if line.startswith("PROBE ")]
    assert probe, run.stdout
    _, torch_version, uid, gid, home, has_entrypoint = probe[-1].split()
    assert torch_version == EXPECTED_TORCH
    assert (uid, gid) == ("1000", "1000")
    assert home == "/home/prunebench"
    assert has_entrypoint == "True"
