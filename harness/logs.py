"""Logging settings shared by the command line and the cell process."""

from __future__ import annotations

import logging

# Libraries whose INFO lines (every HTTP request, lock, dataset load) would drown prunebench's own.
NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "urllib3", "filelock", "datasets", "huggingface_hub", "transformers",
                 "lm_eval", "gguf")


def quiet_libraries() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
