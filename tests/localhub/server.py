"""A Hugging Face hub stand-in: serves repositories from local folders under their real ids and revisions.

Why a server and not the hub's cache layout with HF_HUB_OFFLINE: the offline layout would skip exactly the
code that breaks in a user's first run (revision resolution, dataset file listing, streaming with ranges,
the hub's error codes), and it cannot show what a dropped connection or a slow hub does.

What it answers (as huggingface.co does, for the calls the pinned libraries make):
- ``HEAD|GET /{repo}/resolve/{rev}/{path}`` and ``/datasets/{repo}/resolve/...``: file bytes, ``X-Repo-Commit``,
  ``ETag`` (git blob id, or sha256 with ``X-Linked-Etag``/``X-Linked-Size`` for LFS files), ``Content-Length``,
  byte ranges (206, 416);
- ``GET /api/{models|datasets}/{repo}[/revision/{rev}]``: repository info with its siblings;
- ``GET /api/{kind}/{repo}/tree/{rev}[/{path}]`` (``recursive``; pages with ``Link: rel="next"``) and
  ``POST .../paths-info/{rev}``; ``GET /api/agent-harnesses`` (an empty registry);
- errors with the hub's ``X-Error-Code``: RepoNotFound (401 to anonymous users, as the hub answers, 404 with a
  token), GatedRepo (files of a gated repo: 401 anonymous, 403 with a token; its info and listing stay public),
  RevisionNotFound and EntryNotFound (404; also the tree of a file or a missing folder).
Faults for tests: ``slow_s`` delays every answer, ``drop`` cuts the body of matching files half-way.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

log = logging.getLogger(__name__)

KINDS = {"models": "model", "datasets": "dataset"}


@dataclass(frozen=True)
class HubRepo:
    """One repository at one commit: ``directory`` holds its files as the hub lists them."""

    kind: str  # "model" | "dataset"
    repo_id: str  # owner/name
    directory: Path
    revision: str | None = None  # 40 hex digits; None = derived from the files
    gated: bool = False

    def files(self) -> dict[str, Path]:
        return {p.relative_to(self.directory).as_posix(): p for p in sorted(self.directory.rglob("*")) if p.is_file()}

    def commit(self) -> str:
        if self.revision is not None:
            return self.revision
        digest = hashlib.sha1()
        for name, path in self.files().items():
            digest.update(name.encode() + b"\0" + _file_sha256(path).encode())
        return digest.hexdigest()


_DIGESTS: dict[tuple[str, str, float, int], str] = {}
_DIGESTS_LOCK = threading.Lock()
# What the hub's .gitattributes sends to LFS: binary formats, and anything from 10 MB on.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".parquet", ".arrow", ".gz", ".zst", ".model")
LFS_MIN_SIZE = 10 * 1024 * 1024


def _digest(path: Path, kind: str) -> str:
    """sha256 of the file, or (``kind="git"``) its git blob id, computed once per file version."""
    stat = path.stat()
    key = (kind, str(path), stat.st_mtime, stat.st_size)
    with _DIGESTS_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(f"blob {stat.st_size}\0".encode())
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _file_sha256(path: Path) -> str:
    return _digest(path, "sha256")


def _is_lfs(name: str, path: Path) -> bool:
    return name.endswith(LFS_SUFFIXES) or path.stat().st_size >= LFS_MIN_SIZE


def _etag(name: str, path: Path) -> str:
    """The hub's ETag: the sha256 for an LFS file, the git blob id for a file kept in git."""
    return _file_sha256(path) if _is_lfs(name, path) else _digest(path, "git")


@dataclass
class Faults:
    """What the hub does wrong, changeable while it runs."""

    slow_s: float = 0.0  # sleep before every answer
    drop: list[str] = field(default_factory=list)  # fnmatch patterns of "repo_id/path" whose body is cut


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        log.debug("localhub %s", format % args)

    # --- plumbing ------------------------------------------------------------------------------

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload: object, status: int = 200) -> None:
        self._reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self._reply(status, json.dumps({"error": message}).encode(), headers)

    def _handle(self) -> None:
        hub = self.server.hub
        ranged = self.headers.get("Range")
        hub.requests.append(f"{self.command} {self.path}" + (f" [{ranged}]" if ranged else ""))
        if hub.faults.slow_s:
            time.sleep(hub.faults.slow_s)
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        if not parts:
            self._reply(200, b"local hub", {"Content-Type": "text/plain"})
            return
        if parts == ["api", "agent-harnesses"]:  # huggingface_hub >= 2.4 fetches it once a day (agent detection)
            self._json({"standardEnvVars": [], "harnesses": {}})
            return
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in KINDS:
            self._api(KINDS[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:], query)
            return
        kind = "model"
        if parts[0] == "datasets":
            kind, parts = "dataset", parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(kind, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            return
        self._error(404, None, f"no route for {url.path}")

    do_GET = do_HEAD = _handle

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.post_body = self.rfile.read(length) if length else b""
        self._handle()

    # --- repositories ---------------------------------------------------------------------------

    def _authenticated(self) -> bool:
        return bool(self.headers.get("Authorization"))

    def _repo(self, kind: str, repo_id: str, revision: str | None, content: bool = False) -> HubRepo | None:
        """The repository at ``revision``, or None after answering with the hub's error. ``content``: the call
        reads a file, which a gated repository refuses (its info and file listing stay public, as on the hub)."""
        repo = self.server.hub.repos.get((kind, repo_id))
        if repo is None:
            # The hub does not tell anonymous callers whether a repository exists: 401, as for a private one.
            status = 404 if self._authenticated() else 401
            self._error(status, "RepoNotFound", "Repository not found")
            return None
        if repo.gated and content:
            if self._authenticated():
                self._error(403, "GatedRepo", f"Access to {kind} {repo_id} is restricted and you are not in the "
                            "authorized list. Visit the repository page to ask for access.")
            else:
                self._error(401, "GatedRepo", f"Access to {kind} {repo_id} is restricted. You must have access to "
                            "it and be authenticated to access it. Please log in.")
            return None
        if revision is not None and revision not in ("main", repo.commit()):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    def _entry(self, name: str, path: Path) -> dict[str, object]:
        size = path.stat().st_size
        if not _is_lfs(name, path):
            return {"type": "file", "oid": _digest(path, "git"), "size": size, "path": name}
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{_file_sha256(path)}\nsize {size}\n"
        return {"type": "file", "oid": hashlib.sha1(f"blob {len(pointer)}\0{pointer}".encode()).hexdigest(),
                "size": size, "path": name, "lfs": {"oid": _file_sha256(path), "size": size,
                                                    "pointerSize": len(pointer)}}

    def _api(self, kind: str, repo_id: str, rest: list[str], query: dict[str, list[str]]) -> None:
        revision = rest[1] if len(rest) >= 2 and rest[0] == "revision" else None
        if rest and rest[0] in ("tree", "paths-info") and len(rest) >= 2:
            revision = rest[1]
        repo = self._repo(kind, repo_id, revision)
        if repo is None:
            return
        files = repo.files()
        if not rest or rest[0] == "revision":
            info: dict[str, object] = {
                "_id": repo.commit()[:24], "id": repo_id, "sha": repo.commit(), "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "cardData": {},
                "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": name} for name in files],
            }
            self._json(info)
            return
        if rest[0] == "tree":
            prefix = "/".join(rest[2:]).strip("/")
            recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
            if prefix and not any(name.startswith(prefix + "/") for name in files):
                # a file or nothing: the hub lists folders only (HfFileSystem then looks the file up in the parent)
                self._error(404, "EntryNotFound", f"{prefix} does not exist on \"{revision}\"")
                return
            entries = self._tree(files, prefix, recursive)
            # Pages as the hub's: a ``Link: <...>; rel="next"`` header while entries remain (opaque cursor).
            size = self.server.hub.tree_page_size
            offset = int((query.get("cursor") or ["0"])[0])
            headers = {"Content-Type": "application/json"}
            if offset + size < len(entries):
                nxt = {k: v[0] for k, v in query.items()} | {"cursor": str(offset + size)}
                url = f"http://{self.headers.get('Host')}{urlsplit(self.path).path}?{urlencode(nxt)}"
                headers["Link"] = f'<{url}>; rel="next"'
            self._reply(200, json.dumps(entries[offset : offset + size]).encode(), headers)
            return
        if rest[0] == "paths-info":
            paths = self._posted_paths()
            entries = []
            for wanted in paths:
                wanted = wanted.strip("/")
                if wanted in files:
                    entries.append(self._entry(wanted, files[wanted]))
                elif any(name.startswith(wanted + "/") for name in files):
                    entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": wanted})
            self._json(entries)
            return
        self._error(404, None, f"unknown api call {'/'.join(rest)}")

    def _posted_paths(self) -> list[str]:
        body = getattr(self, "post_body", b"")
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            return list(json.loads(body or b"{}").get("paths", []))
        return parse_qs(body.decode()).get("paths", [])

    def _tree(self, files: dict[str, Path], prefix: str, recursive: bool) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        dirs: set[str] = set()
        for name, path in files.items():
            if prefix and not name.startswith(prefix + "/"):
                continue
            rel = name[len(prefix) + 1 :] if prefix else name
            segments = rel.split("/")
            for depth in range(1, len(segments)):
                if not recursive and depth > 1:
                    break
                dirs.add("/".join(([prefix] if prefix else []) + segments[:depth]))
            if recursive or len(segments) == 1:
                entries.append(self._entry(name, path))
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
        return entries

    def _resolve(self, kind: str, repo_id: str, revision: str, name: str) -> None:
        repo = self._repo(kind, repo_id, revision, content=True)
        if repo is None:
            return
        path = repo.files().get(name)
        if path is None:
            self._error(404, "EntryNotFound", f"{name} does not exist on \"{revision}\"")
            return
        size = path.stat().st_size
        start, stop = 0, size
        status = 200
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            first, _, last = ranged[len("bytes="):].split(",")[0].partition("-")
            if first:
                start, stop = int(first), min(size, int(last) + 1 if last else size)
            else:  # a suffix: the last N bytes
                start, stop = max(0, size - int(last)), size
            if start >= size or start >= stop:
                self._reply(416, b"", {"Content-Range": f"bytes */{size}", "X-Repo-Commit": repo.commit()})
                return
            status = 206
        headers = {
            "X-Repo-Commit": repo.commit(),
            "ETag": f'"{_etag(name, path)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Last-Modified": formatdate(path.stat().st_mtime, usegmt=True),
        }
        if _is_lfs(name, path):  # what the hub sends beside its redirect of an LFS file to the CDN
            headers |= {"X-Linked-Etag": f'"{_file_sha256(path)}"', "X-Linked-Size": str(size)}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        dropped = any(fnmatch.fnmatch(f"{repo_id}/{name}", pat) for pat in self.server.hub.faults.drop)
        # A dropped answer sends half the promised bytes, then the connection goes away.
        end = start + (stop - start) // 2 if dropped else stop
        with path.open("rb") as f:
            f.seek(start)
            while f.tell() < end:
                chunk = f.read(min(1 << 20, end - f.tell()))
                if not chunk:
                    break
                self.wfile.write(chunk)
        if dropped:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (its timeout, a cut download) is part of the tests: no traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            log.debug("localhub: client %s went away (%s)", client_address, exc)
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class LocalHub:
    """The stand-in, started on 127.0.0.1 at a free port: ``endpoint`` is what HF_ENDPOINT takes."""

    def __init__(self, repos: list[HubRepo], port: int = 0) -> None:
        self.repos = {(r.kind, r.repo_id): r for r in repos}
        self.faults = Faults()
        self.tree_page_size = 1000  # entries per page of a tree listing
        self.requests: list[str] = []
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.hub = self
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        self._thread = threading.Thread(target=self._server.serve_forever, name="localhub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """``python -m tests.localhub.server ROOT [--port N]``: serve the repositories that fixtures built in ROOT."""
    from tests.localhub.fixtures import load_repos

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    hub = LocalHub(load_repos(args.root), port=args.port).start()
    log.info("serving %d repositories at %s (HF_ENDPOINT=%s)", len(hub.repos), args.root, hub.endpoint)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
