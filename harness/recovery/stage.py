"""A recovery from settings to a merged model: checked first (no weights), then trained, cached where asked.

``plan`` refuses bad settings, an unknown target module, an unknown data source in one line before any model
loads; ``run`` trains; ``run_cached`` serves a model recovered before with the same pruned model, settings,
data and code (harness.prune_cache's cache, in its own folder).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from harness.data.sources import validate_source
from harness.hashing import canonical_hash
from harness.profiles import calibration_source
from harness.recovery.config import FOLLOWS, RecoveryConfig, RecoveryReport, check_targets, recovery_config
from harness.recovery.data import TrainingText, resolve_source, training_corpus, training_text
from harness.recovery.train import StepCallback, recover
from methods.arch import ModelAdapter

log = logging.getLogger(__name__)

RECOVERY_ENTRY = "harness.recovery.stage"
CACHE_FOLDER = "recovered"


@dataclass(frozen=True)
class RecoveryPlan:
    config: RecoveryConfig
    follows: str
    source: str  # the training text's source (its calibration part)
    evaluation: tuple[str, ...]  # the evaluation sources it must not overlap


def plan(profile: str, overrides: dict[str, JsonValue] | None, model_type: str, evaluation: Iterable[str],
         where: str = "bench setting 'recovery'") -> RecoveryPlan:
    """Everything a recovery can refuse without weights or text: settings, target modules, data sources."""
    config = recovery_config(profile, overrides, where)
    check_targets(config, model_type)
    evaluated = tuple(dict.fromkeys(evaluation))
    for name in evaluated:
        validate_source(name)
    return RecoveryPlan(config, FOLLOWS[profile], resolve_source(config.data, calibration_source(profile)), evaluated)


def load_text(recovery: RecoveryPlan, tokenizer: Any) -> TrainingText:
    """The training chunks, after the check that they share nothing with the evaluation text."""
    corpus, disjointness = training_corpus(recovery.source, recovery.evaluation)
    return training_text(corpus, disjointness, tokenizer, recovery.config.seq_len)


def run(recovery: RecoveryPlan, adapter: ModelAdapter, tokenizer: Any, on_step: StepCallback | None = None,
        text: TrainingText | None = None) -> RecoveryReport:
    """Recover ``adapter``'s model in place (merged afterwards) and report it."""
    text = text if text is not None else load_text(recovery, tokenizer)
    return recover(adapter, text, recovery.config, recovery.follows, on_step)


@functools.cache
def recovery_fingerprint() -> tuple[tuple[str, str], ...]:
    """The recovery code (the import closure of this module) and the libraries it trains with."""
    import harness
    from harness.prune_cache import import_closure, source_digest

    base = Path(harness.__file__).resolve().parent.parent
    return (("code", source_digest(import_closure([RECOVERY_ENTRY], base), base)),
            *((name, importlib.metadata.version(name)) for name in ("peft", "torch", "transformers")))


def recovery_key(pruned_key: str, recovery: RecoveryPlan, text: TrainingText) -> str:
    """Everything that determines a recovered model: the pruned model, the settings, the data, the code."""
    data = {k: text.protocol.get(k) for k in ("source", "role", "text_sha256", "seq_len", "chunks")}
    return canonical_hash({"pruned": pruned_key, "settings": recovery.config.model_dump(mode="json"), "data": data,
                           "code": dict(recovery_fingerprint())})


def run_cached(recovery: RecoveryPlan, adapter: ModelAdapter, tokenizer: Any, pruned_key: str,
               info: dict[str, Any], reload: Any) -> tuple[ModelAdapter, RecoveryReport]:
    """The recovered model of ``adapter`` from the cache when the same recovery ran before, else recovered now and
    cached (with ``info``: the pruned checkpoint's own records). ``reload(entry, manifest)`` loads a cached entry."""
    from harness.checkpoint import read_manifest, save_pruned
    from harness.prune_cache import PrunedModelCache

    text = load_text(recovery, tokenizer)
    key = recovery_key(pruned_key, recovery, text)
    done: dict[str, RecoveryReport] = {}

    def create(entry: Path) -> None:
        report = run(recovery, adapter, tokenizer, text=text).model_copy(update={"cache_key": key})
        save_pruned(adapter, tokenizer, entry, info={**info, "recovery": report.model_dump(mode="json")})
        done["report"] = report

    entry, created, _ = PrunedModelCache.in_cache(CACHE_FOLDER).obtain(key, create)
    if created:
        return adapter, done["report"]
    log.info("recovered model found in the cache (%s): not training again", entry)
    manifest = read_manifest(entry)
    report = RecoveryReport.model_validate(manifest["recovery"]).model_copy(update={"from_cache": True})
    return reload(entry, manifest), report


def evaluation_sources(spec: Any) -> list[str]:
    """The texts a bench cell's metrics evaluate on (``Metric.evaluation_texts``): what its recovery must not
    train on."""
    from harness.metrics.registry import METRICS

    return [text for name, metric in METRICS.items() for text in metric.evaluation_texts(getattr(spec, name))]


def plan_of(spec: Any, model_type: str) -> RecoveryPlan:
    """A bench cell's recovery, planned from its resolved spec."""
    return plan(spec.profile, spec.recovery.model_dump(), model_type, evaluation_sources(spec))


# What a recovered checkpoint keeps of the pruned one's manifest besides the structure: its pruning's record.
KEPT_RECORDS = ("prune_report",)


def load_checkpoint(path: Path, dtype: Any, device: Any) -> tuple[ModelAdapter, Any, dict[str, Any]]:
    """A pruned checkpoint as an adapter that knows its dense config and edits (what saving it again needs),
    its tokenizer and its manifest."""
    from transformers import AutoTokenizer

    from harness.checkpoint import load_pruned, read_manifest
    from methods.arch import adapt

    manifest = read_manifest(path)
    adapter = adapt(load_pruned(path, dtype=dtype, device=device))
    adapter.base_config, adapter.ops = dict(manifest["base_config"]), list(manifest["ops"])
    return adapter, AutoTokenizer.from_pretrained(path), manifest


def save_recovered(adapter: ModelAdapter, tokenizer: Any, out: Path, manifest: dict[str, Any],
                   report: RecoveryReport) -> Path:
    """The merged model as a pruned checkpoint, with the pruned one's records and the recovery's report."""
    from harness.checkpoint import save_pruned

    info = {k: manifest[k] for k in KEPT_RECORDS if k in manifest}
    return save_pruned(adapter, tokenizer, out, info={**info, "recovery": report.model_dump(mode="json")})
