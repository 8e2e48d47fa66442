"""The local executor's fork server (harness.bench.executors.forkserver): what a forked cell shares with a fresh
process (its own session, its output in its log, its exit status), and that it never outlives its server.

A cell whose ``--spec`` is a FIFO nobody writes blocks at its first line of work: a cell that runs as long as the
test needs, at no cost."""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness.bench.executors.base import stop
from harness.bench.executors.forkserver import ForkServer, forking_allowed
from harness.bench.executors.local import LocalExecutor

pytestmark = pytest.mark.skipif(not forking_allowed(), reason="cells are not forked where an NVIDIA driver is loaded")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _blocked_cell_args(tmp_path) -> list[str]:
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    return ["--spec", str(fifo), "--result", str(tmp_path / "never.json")]


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def server():
    server = ForkServer(_env())
    yield server
    server.close()


def test_a_forked_cell_writes_to_its_log_in_its_own_session_and_exits_with_its_status(server, tmp_path):
    log_path = tmp_path / "cell.log"
    log_path.write_text("=== the executor's line\n")
    cell = server.spawn(["--spec"], log_path)  # argparse: '--spec' expects an argument
    assert cell.wait(60) == 2
    text = log_path.read_text()
    assert text.startswith("=== the executor's line\n") and "--spec: expected one argument" in text


def test_a_stopped_cell_is_reported_by_its_signal_and_the_server_forks_again(server, tmp_path):
    cell = server.spawn(_blocked_cell_args(tmp_path), tmp_path / "blocked.log")
    assert os.getpgid(cell.pid) == cell.pid  # its own process group: stop() signals the group
    stop(cell)
    assert cell.returncode == -signal.SIGTERM
    again = server.spawn(["--spec"], tmp_path / "again.log")
    assert again.wait(60) == 2


def test_a_cell_dies_with_its_server(tmp_path):
    server = ForkServer(_env())
    cell = server.spawn(_blocked_cell_args(tmp_path), tmp_path / "orphan.log")
    server._proc.kill()
    server._proc.wait()
    assert _gone(cell.pid), "the forked cell outlived its server"
    assert cell.wait(10) == -signal.SIGKILL  # what the client reports when the server is gone
    server.close()


def test_a_mistyped_local_executor_option_is_one_line():
    from harness.errors import PrunebenchError

    with pytest.raises(PrunebenchError, match="local executor option 'forks': Extra inputs are not permitted"):
        LocalExecutor(forks=False)
