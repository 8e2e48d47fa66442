"""Is the Hugging Face hub reachable from here? Answered in seconds, so offline runs fail fast."""

from __future__ import annotations

import logging
import threading

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
