"""Publishing a finished bench run into ``results/``, the folder of committed results.

A bench writes into ``runs/<model>[/<preset>]`` (the user's own, never committed). ``prunebench
publish RUN_DIR`` is the one step that updates ``results/``: it copies a run whose every cell
succeeded, measured from one clean commit, and rebuilds the leaderboard there from exactly the files
it copied. The destination is replaced as a whole (built beside it, then renamed into place), so a
published folder never mixes two runs. Anything wrong is refused before a byte is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.bench.config import model_slug
from harness.env import ran_committed_sources
from harness.errors import PrunebenchError
from harness.files import as_if_created, make_temp_dir
from harness.manifest import write_manifest
from harness.results import CellResult, scan_results

CELLS = "cells"


class PublishRefused(PrunebenchError):
    """A run that cannot be published as it is; nothing was written."""


@dataclass
class Published:
    run_dir: Path
    dest: Path
    model: str
    commit: str
    cells: list[str]
    leaderboard: list[Path]  # the files rebuilt in ``dest``
    replaced: int | None  # None: ``dest`` was new; else how many results the publication it replaced held
    kept: list[str] = field(default_factory=list)  # nested published runs (presets) carried over


def read_bench(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "bench.json"
    if not path.is_file():
        raise PublishRefused(f"{run_dir} has no bench.json: not the folder of a bench run "
                             "(make bench writes runs/<model>/)")
    try:
        bench = json.loads(path.read_text())
        model = bench["config"]["model"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise PublishRefused(f"{path} is not a bench record ({type(err).__name__}: {err})") from None
    if not isinstance(model, str) or not model:
        raise PublishRefused(f"{path} names no model")
    return bench


def default_dest(bench: dict[str, Any]) -> Path:
    """``results/<model-slug>[/<preset>]``, as the bench's config names them."""
    config = bench["config"]
    return Path("results") / model_slug(config["model"]) / (config.get("preset") or "")


def _ids(paths: list[str], limit: int = 8) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _git(result: CellResult) -> dict[str, Any] | None:
    git = (result.environment.get("prunebench") or {}).get("git")
    return git if isinstance(git, dict) and git.get("commit") else None


def check_run(run_dir: Path) -> tuple[dict[str, Any], list[tuple[Path, CellResult]], str]:
    """The bench record, the results and their one commit of a publishable run; else PublishRefused."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PublishRefused(f"'{run_dir}' is not a directory")
    bench = read_bench(run_dir)
    cells = run_dir / CELLS
    found, problems = scan_results(cells)
    if problems:
        more = f" (and {len(problems) - 1} more invalid files)" if len(problems) > 1 else ""
        raise PublishRefused(f"invalid result file: {problems[0]}{more}; fix or remove it and run the bench "
                             "again")
    if not found:
        raise PublishRefused(f"{run_dir} holds no result (no {CELLS}/*.json): nothing to publish")
    failed = [r.cell.id for _, r in found if r.status != "ok"]
    if failed:
        raise PublishRefused(f"{len(failed)} cells failed ({_ids(failed)}): a published run has every cell "
                             "ok; fix them and run the bench again")
    unfinished = sorted(p.name.removesuffix(".spec.json") for p in cells.glob("*.spec.json")
                        if not p.with_name(p.name.removesuffix(".spec.json") + ".json").exists())
    if unfinished:
        raise PublishRefused(f"{len(unfinished)} cells have no result ({_ids(unfinished)}): the run did not "
                             "finish; run the same bench again to complete it")
    models = sorted({r.cell.model for _, r in found} | {bench["config"]["model"]})
    if len(models) > 1:
        raise PublishRefused(f"{run_dir} holds results of several models ({', '.join(models)}): "
                             "publish one model's run")
    unknown = [r.cell.id for _, r in found if _git(r) is None]
    if unknown:
        raise PublishRefused(f"{len(unknown)} results record no prunebench commit ({_ids(unknown)}): only "
                             "results measured from a git checkout (or an image built from one) can be "
                             "published")
    dirty = [r.cell.id for _, r in found if not ran_committed_sources(r.environment)]
    if dirty:
        commits = sorted({_git(r)["commit"][:10] for _, r in found if r.cell.id in dirty})
        raise PublishRefused(f"{len(dirty)} results were measured from a dirty tree (uncommitted changes to the "
                             f"sources on "
                             f"{', '.join(commits)}: {_ids(dirty)}); commit, then run the bench again "
                             "with --force")
    # A model the cell pruned itself is its own code's (checked above); one it took from the cache must come from
    # a clean tree, as the pruning run's record holds no source digest to check.
    borrowed = [r.cell.id for _, r in found if r.pruning and r.pruning.from_cache and r.pruning.pruned_by
                and (r.pruning.pruned_by.git or {}).get("dirty") is not False]
    if borrowed:
        raise PublishRefused(f"{len(borrowed)} results reuse a pruned model that a dirty tree (or an unrecorded "
                             f"commit) pruned ({_ids(borrowed)}): run the bench again with --force to prune them "
                             "with this commit")
    by_commit = Counter(_git(r)["commit"] for _, r in found)
    if len(by_commit) > 1:
        made = ", ".join(f"{c[:10]} ({n} cells)" for c, n in by_commit.most_common())
        raise PublishRefused(f"the results were made by {len(by_commit)} commits: {made}; a published run "
                             "comes from one commit: run the bench again with --force")
    if not (run_dir / "leaderboard.md").is_file():
        raise PublishRefused(f"{run_dir} has no leaderboard.md: the bench did not finish; run it again to "
                             "complete it")
    return bench, found, next(iter(by_commit))


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _check_dest(dest: Path, run_dir: Path, model: str, force: bool) -> None:
    dest_abs, run_abs = dest.expanduser().resolve(), run_dir.resolve()
    if _inside(dest_abs, run_abs) or _inside(run_abs, dest_abs):
        raise PublishRefused(f"the destination {dest} and the run {run_dir} overlap: "
                             "publish into another folder")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise PublishRefused(f"the destination {dest} exists and is not a directory")
    if any(dest.iterdir()) and not (dest / "bench.json").is_file():
        raise PublishRefused(f"{dest} exists and does not hold a published run (no bench.json): publish replaces "
                             "only a published run; choose another --to")
    if force:
        return
    theirs = {_bench_model(dest)} | {r.cell.model for _, r in scan_results(dest / CELLS)[0]}
    theirs = {m for m in theirs | {_bench_model(p) for p in _nested_runs(dest)} if m}
    if theirs - {model}:
        others = ", ".join(sorted(theirs - {model}))
        raise PublishRefused(f"{dest} holds results of another model ({others}); pass --force to replace "
                             "them, or --to another folder")


def _copy_run(found: list[tuple[Path, CellResult]], run_dir: Path, staging: Path) -> list[str]:
    cells_dir = run_dir / CELLS
    for path, _ in found:
        target = staging / CELLS / path.relative_to(cells_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        stem = path.name.removesuffix(".json")
        for name in (path.name, f"{stem}.log", f"{stem}.spec.json"):
            if (path.parent / name).is_file():
                shutil.copy2(path.parent / name, target.parent / name)
    shutil.copy2(run_dir / "bench.json", staging / "bench.json")
    return sorted(r.cell.id for _, r in found)


def _bench_model(folder: Path) -> str | None:
    try:
        return json.loads((folder / "bench.json").read_text())["config"]["model"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return None


def _nested_runs(dest: Path, model: str | None = None) -> list[Path]:
    """Published runs inside ``dest`` (a model's presets under its folder; of ``model`` if given)."""
    if not dest.is_dir():
        return []
    return sorted(p for p in dest.iterdir() if p.is_dir() and p.name != CELLS and (p / "bench.json").is_file()
                  and (model is None or _bench_model(p) == model))


def _swap(staging: Path, dest: Path) -> None:
    """Put ``staging`` at ``dest``; an existing ``dest`` is moved aside first and removed after."""
    if not dest.exists():
        os.replace(staging, dest)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    aside.rmdir()
    os.replace(dest, aside)
    try:
        os.replace(staging, dest)
    except BaseException:
        os.replace(aside, dest)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def publish(run_dir: Path, to: Path | None = None, force: bool = False) -> Published:
    """Copy a finished, clean run into ``to`` (default results/<model>[/<preset>]) with a new leaderboard."""
    from harness.report.leaderboard import write_leaderboard

    run_dir = Path(run_dir)
    bench, found, commit = check_run(run_dir)
    model = bench["config"]["model"]
    dest = Path(to) if to is not None else default_dest(bench)
    _check_dest(dest, run_dir, model, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = make_temp_dir(dest.parent, f".{dest.name}.publish-")
    try:
        cells = _copy_run(found, run_dir, staging)
        write_manifest(staging, model, commit)
        copied, problems = scan_results(staging / CELLS)
        if problems or len(copied) != len(found):
            raise PublishRefused(f"the copy in {staging} does not read back "
                                 f"({problems[:1] or len(copied)}); nothing published")
        leaderboard = [dest / p.relative_to(staging) for p in write_leaderboard(staging)]
        kept = []
        for nested in _nested_runs(dest, model):  # their own publications: kept
            shutil.copytree(nested, staging / nested.name, symlinks=True)
            kept.append(nested.name)
        replaced = len(scan_results(dest / CELLS)[0]) if dest.exists() else None
        as_if_created(staging)  # copies keep their source's mode: a run written 0600 by older code included
        _swap(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Published(run_dir, dest, model, commit, cells, leaderboard, replaced, kept)
