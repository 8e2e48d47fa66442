"""Is the Hugging Face hub reachable from here? Answered fast, so offline runs fail in seconds, not minutes."""

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse


def _offline_by_env() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@lru_cache(maxsize=1)  # one probe per process: the answer does not change during a run
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub's endpoint accepts a TCP connection within ``timeout`` seconds."""
    if _offline_by_env():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
