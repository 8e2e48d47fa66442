"""A bench's hub inputs, fetched once by the driver before any cell runs, or found in the local caches.

A bench that names a hub model, hub corpora (wikitext2, c4, fineweb-edu) or the paper's lm-eval tasks
reaches the hub here, in the driver, and nowhere else when its cells run on this machine:

- hub reachable: the model's files (huggingface_hub's cache), the corpora's documents (prunebench's data
  cache) and the tasks' datasets (the datasets cache) are fetched now, so a gated or missing model, a
  revision or file that does not exist, a dropped connection or a slow hub is one line and exit 2 before
  any cell; the local executor's cells then run with HF_HUB_OFFLINE=1 and read what was fetched.
- hub unreachable (or HF_HUB_OFFLINE set): the same inputs must be in those caches; the driver says that it
  reads them from there, and names the first one that is missing.

Docker and ray cells have caches of their own (the container's, a node's) and fetch for themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from harness.errors import ModelUnavailable

log = logging.getLogger(__name__)

Mode = Literal["none", "online", "offline", "unreachable"]
# What a cell on this machine needs to read the driver's downloads and nothing else.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@dataclass
class HubInputs:
    """How a bench reaches the hub, and what it read from it (or from the caches)."""

    mode: Mode
    endpoint: str = ""
    model_commit: str | None = None
    corpora: list[str] = field(default_factory=list)  # "c4 (calibration)", ...
    tasks: list[str] = field(default_factory=list)

    def cell_env(self, executor: str) -> dict[str, str]:
        """Environment for the cells: offline where they share the driver's caches (the local executor)."""
        return dict(OFFLINE_ENV) if self.mode != "none" and executor == "local" else {}

    def describe(self) -> str:
        if self.mode == "none":
            return "hub: not used"
        where = {"online": f"fetched from {self.endpoint}", "offline": "from the local caches (HF_HUB_OFFLINE)",
                 "unreachable": f"from the local caches ({self.endpoint} does not answer)"}[self.mode]
        parts = ([f"model at commit {self.model_commit}"] if self.model_commit else []) + self.corpora + self.tasks
        return f"hub inputs {where}: {', '.join(parts)}"


def prepare(model: str | None, corpora: list[tuple[str, str]], tasks: list[str]) -> HubInputs:
    """Fetch (or find cached) the hub model ``model``, the hub corpora ``(source, role)`` and the lm-eval hub
    ``tasks``; one ``PrunebenchError`` line for the first that cannot be had."""
    from harness.data.sources import load_corpus
    from harness.hub import HubFailure, cached_model, fetch_model, hub_endpoint, hub_reachable, offline_mode
    from harness.models import resolve_model

    ref = resolve_model(model)
    if ref.kind != "hub" and not corpora and not tasks:
        return HubInputs("none")
    mode: Mode = "offline" if offline_mode() else ("online" if hub_reachable() else "unreachable")
    inputs = HubInputs(mode, hub_endpoint())
    if mode == "unreachable":
        log.warning("the Hugging Face hub (%s) does not answer: reading the model, data and tasks from the local "
                    "caches", inputs.endpoint)
    if ref.kind == "hub":
        try:
            inputs.model_commit = (fetch_model if mode == "online" else cached_model)(ref.location)
        except HubFailure as err:
            silent = f"; the hub ({inputs.endpoint}) does not answer" if mode == "unreachable" else ""
            raise ModelUnavailable(f"{err}{silent}") from err
        log.info("model %s: commit %s %s", ref.name, inputs.model_commit,
                 "downloaded" if mode == "online" else "from the local Hugging Face cache")
    for source, role in corpora:
        corpus = load_corpus(source, role)  # online: fetched into prunebench's data cache; else read from it
        inputs.corpora.append(f"{source} ({role}, {corpus.protocol['documents']} documents)")
    if tasks:
        if mode == "online":
            from harness.metrics.tasks.driver import fetch_tasks

            fetch_tasks(tasks)
            inputs.tasks = [f"task {t}" for t in tasks]
        else:  # the datasets library finds its cache only in offline mode; the cells run in it and say if not
            inputs.tasks = [f"task {t} (from the datasets cache, checked in the cells)" for t in tasks]
    return inputs
