"""Local cells forked from a process that has already imported what a cell needs.

A fresh cell process spends about 5 s importing torch, transformers and lm-eval before its first line of work:
a default bench of 19 cells spends 1.5 min on it, the test suite far more. The fork server does those imports
once (``harness.bench.cell.preload``) and forks one child per cell. The child runs ``harness.bench.cell.main``
as ``python -m harness.bench.cell`` would: in a session of its own, with stdout and stderr in the cell's log,
killed with the server, which is killed with the bench (``base.die_with_parent``).

The server does nothing but import before it forks: no model, no tensor, no thread pool of torch's, so each child
starts from the state a fresh process reaches after its imports, and two cells never see each other's state.
Two things cannot be inherited, and there cells start as fresh processes (``executors.local``):
- CUDA. A driver that a parent has initialised does not work in a forked child, so the server is not used where
  an NVIDIA driver is loaded (a 7B model's load dwarfs 5 s anyway).
- An environment of its own: modules read settings such as ``HF_HUB_OFFLINE`` when they are imported, so a server
  runs with the environment of the cells it forks, and a cell that needs another one gets a server of its own.

Protocol, a JSON line each way. The server says ``{"ready": true}`` after its imports (or ``{"error": ...}``);
then for each ``{"argv": [...], "log": path}`` it answers ``{"pid": n}``, and ``{"status": s}`` (``os.waitpid``'s)
once that child has ended.

    python -m harness.bench.executors.forkserver     (started by ForkServer, never by hand)
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import IO, Any, NoReturn

from harness.bench.executors.base import PR_SET_PDEATHSIG, die_with_parent, libc_prctl
from harness.devices import driver_version

log = logging.getLogger("prunebench.executors")

READY_TIMEOUT_S = 300.0  # the server's imports; far more than they take on a loaded machine


class ServerGone(Exception):
    """The fork server ended, or answered what it should not have."""


class ForkedCell:
    """A cell forked by the server, with the part of ``subprocess.Popen`` the executors use: ``pid`` (also its
    process group: the child calls setsid), ``returncode`` (negative for a signal, as Popen's) and ``wait``."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._server = server

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                status = self._server.receive("status", timeout)
            except ServerGone:
                status = signal.SIGKILL  # the server died, and its child with it (PR_SET_PDEATHSIG)
            self._server.owed = False
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class ForkServer:
    """A running server with the environment ``env``; ``spawn`` forks a cell from it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.owed = False  # a child's end not yet read: read before the next request
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "harness.bench.executors.forkserver"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent(libc_prctl()))
        self._ready = False

    def spawn(self, argv: list[str], log_path: Path) -> ForkedCell:
        """Fork a cell running ``harness.bench.cell.main(argv)`` with its output appended to ``log_path``."""
        if not self._ready:
            self.receive("ready", READY_TIMEOUT_S)
            self._ready = True
        if self.owed:
            self.receive("status", None)  # a stopped cell's end: the server reaps every child it forks
            self.owed = False
        self._send({"argv": argv, "log": str(log_path.resolve())})
        pid = self.receive("pid", READY_TIMEOUT_S)
        self.owed = True
        return ForkedCell(self, pid)

    def receive(self, key: str, timeout: float | None) -> Any:
        """The server's next message, which must hold ``key``; ``subprocess.TimeoutExpired`` after ``timeout``."""
        out = self._proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout)
        if not ready:
            raise subprocess.TimeoutExpired(self._proc.args, timeout or 0.0)
        line = out.readline()
        if not line:
            raise ServerGone(f"the cell fork server ended (exit {self._proc.poll()})")
        message = json.loads(line)
        if key not in message:
            raise ServerGone(message.get("error", f"the cell fork server said {message}, not '{key}'"))
        return message[key]

    def _send(self, message: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            stdin.flush()
        except BrokenPipeError as err:
            raise ServerGone(f"the cell fork server ended (exit {self._proc.poll()})") from err

    def close(self) -> None:
        """End the server (its stdin closes: it returns), or kill it."""
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def forking_allowed() -> bool:
    """Whether cells may be forked from a server: not where an NVIDIA driver is loaded (CUDA and fork)."""
    return driver_version() is None


# ---------------------------------------------------------------- the server process


def _send_line(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, json.dumps(message).encode() + b"\n")


def _child(request: dict[str, Any], server_pid: int, control: tuple[int, int], settled: int) -> NoReturn:
    """The forked cell: its own session, dead with the server, its output in the log; then the cell's main.
    Writing to ``settled`` tells the server that the session and the death signal are in place."""
    code = 1
    try:
        os.setsid()
        prctl = libc_prctl()
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server_pid:  # the server died before the death signal was armed
            os._exit(1)
        os.write(settled, b"1")
        for fd in (*control, settled):
            os.close(fd)
        out = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        sys.argv = ["harness.bench.cell", *request["argv"]]
        from harness.bench.cell import main

        code = main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # nowhere left to report it: the exit status says the cell failed
        os._exit(code)


def serve() -> NoReturn:
    """Import what a cell needs, then fork one child per request until stdin closes."""
    # The protocol moves to private descriptors; fd 0 reads nothing and fd 1 joins stderr, so that a library that
    # prints while importing cannot break a message.
    control_in, control_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        from harness.bench.cell import preload

        preload()
    except Exception as err:  # the client falls back to fresh processes and says why
        _send_line(control_out, {"error": f"the cell fork server could not import: {type(err).__name__}: {err}"})
        os._exit(1)
    _send_line(control_out, {"ready": True})
    requests: IO[bytes] = os.fdopen(control_in, "rb")
    for line in requests:
        request = json.loads(line)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        settled_r, settled_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(settled_r)
            _child(request, os.getppid(), (control_in, control_out), settled_w)
        os.close(settled_w)
        # The pid goes out once the child leads its own process group (or has died): before that, the executor's
        # killpg would find no group and take a running cell for an ended one.
        os.read(settled_r, 1)
        os.close(settled_r)
        _send_line(control_out, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send_line(control_out, {"status": status})
    os._exit(0)  # stdin closed: the bench is done; skip unloading torch & co. (a second and more)


if __name__ == "__main__":
    serve()
