"""Is the Hugging Face hub reachable from here? Answered in seconds, so offline runs fail fast."""

from __future__ import annotations

import fnmatch
import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 3.0


def hub_endpoint() -> str:
    """HF_ENDPOINT as huggingface_hub read it (a mirror, or the public hub)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def offline_mode() -> bool:
    """HF_HUB_OFFLINE set: the user wants local caches only, and the libraries will not try the network."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the hub endpoint answers at all within ``timeout`` seconds (any HTTP status counts).

    Uses huggingface_hub's own HTTP session, so proxies and certificates are those the libraries
    would use. Runs in a daemon thread so that even a hanging DNS lookup cannot block longer.
    """
    if offline_mode():
        return False
    from huggingface_hub.utils import get_session

    endpoint = hub_endpoint()
    answered: list[bool] = []

    def probe() -> None:
        try:
            get_session().head(endpoint, timeout=timeout)
            answered.append(True)
        except Exception as exc:  # any failure to get an answer means unreachable
            log.debug("hub probe failed: %s", exc)

    thread = threading.Thread(target=probe, name="prunebench-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answered)


# --- a model's files: fetched once by the bench driver, then read from the cache -----------------------

# What transformers reads of a model repository: configs, the weights in one format, the tokenizer files.
_CONFIG_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "tokenizer*")
_WEIGHTS = (("model*.safetensors",), ("pytorch_model*.bin",))


def cache_root() -> str:
    """Where huggingface_hub keeps downloaded repositories (HF_HOME / HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit of ``repo_id`` at ``revision`` (default main) whose config the local cache holds, else None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(path).parent.name if isinstance(path, str) else None


def fetch_model(repo_id: str, revision: str | None = None) -> str:
    """Download what transformers needs of a model repository into the hub cache; its commit.

    Raises ``HubFailure`` with one line naming what failed (gated, missing, no such revision or file, a
    connection lost or timed out).
    """
    from huggingface_hub import HfApi, snapshot_download

    what = f"model '{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    try:
        info = HfApi().model_info(repo_id, revision=revision)
        names = [s.rfilename for s in info.siblings or []]
        weights = next((p for p in _WEIGHTS if any(fnmatch.fnmatch(n, p[0]) for n in names)), None)
        if weights is None:
            raise HubFailure(f"{what} has no weights transformers can load (model*.safetensors or pytorch_model*.bin)")
        path = snapshot_download(repo_id, revision=info.sha, allow_patterns=[*_CONFIG_FILES, *weights])
    except HubFailure:
        raise
    except Exception as exc:
        raise HubFailure(describe_failure(exc, what)) from exc
    return Path(path).name


def cached_model(repo_id: str, revision: str | None = None) -> str:
    """The commit of the copy of ``repo_id`` in the local cache that holds what ``fetch_model`` downloads;
    ``HubFailure`` naming what is missing."""
    from huggingface_hub import snapshot_download

    failure: Exception | None = None
    for weights in _WEIGHTS:
        try:
            path = snapshot_download(repo_id, revision=revision, local_files_only=True,
                                     allow_patterns=[*_CONFIG_FILES, *weights])
        except Exception as exc:
            failure = failure or exc
            continue
        if any(Path(path).glob(weights[0])):
            return Path(path).name
    why = one_line(failure) if failure else "no weight file"
    raise HubFailure(f"model '{repo_id}' is not in the local Hugging Face cache ({cache_root()}): {why}")


class HubFailure(Exception):
    """A hub download that failed, in one line (the harness turns it into its own error type)."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def describe_failure(exc: BaseException, what: str) -> str:
    """One line for a failed hub call, by the hub's own error codes where it sent one."""
    from huggingface_hub import errors

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, errors.GatedRepoError):
            return f"{what} is gated: accept its terms on the hub and set HF_TOKEN"
        if isinstance(err, errors.RevisionNotFoundError):
            return f"{what}: no such revision on {hub_endpoint()}"
        if isinstance(err, errors.RemoteEntryNotFoundError):
            return f"{what}: a file is missing on {hub_endpoint()} ({_url_of(err)})"
        if isinstance(err, errors.RepositoryNotFoundError):
            return f"{what} does not exist on {hub_endpoint()} (or is private: set HF_TOKEN)"
        if isinstance(err, errors.OfflineModeIsEnabled):
            return f"{what} is not in the local cache and HF_HUB_OFFLINE is set"
    for err in chain:
        name = type(err).__name__
        if "Timeout" in name:
            return f"{what}: {hub_endpoint()} did not answer in time ({one_line(err)})"
        if any(k in name for k in ("Connect", "RemoteProtocol", "ReadError", "Incomplete", "ChunkedEncoding")):
            return f"{what}: the connection to {hub_endpoint()} failed ({one_line(err)})"
    return f"{what}: {one_line(exc)}"


def _url_of(err: BaseException) -> str:
    response = getattr(err, "response", None)
    url = getattr(response, "url", None)
    return str(url) if url is not None else one_line(err)
