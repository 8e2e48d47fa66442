"""Every bad input a user can type is one line on stderr and exit code 2, before any expensive work, and no command
deletes or overwrites what it did not write.

One table, ``CASES``, a row per probe case (by the classes of the probe that found them: files a command would
have lost or misplaced, empty strings, negative seeds, what used to end in a traceback, what used to be accepted
silently, click's own usage errors). Each runs in this process through the CLI; its folder of foreign files is
compared byte for byte before and after.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness.cli import app
from methods import method_names

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "smollm2-135m"
# Longer than any of these cases takes when refused up front (a few seconds, model configs only): a case that
# starts pruning or evaluating instead takes minutes.
UP_FRONT_S = 60


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # {name} is replaced by a path of the workspace below
    message: str  # a part of the one line
    foreign: list[str] = field(default_factory=list)  # workspace entries that must survive byte for byte


def _foreign_folder(path: Path) -> None:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shortgpt_checkpoint, smollm2_ref) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    ws = {"root": root, "ckpt": shortgpt_checkpoint}
    for name in ("foreign", "foreign2", "foreign3", "foreign4", "foreign5", "foreign6"):
        _foreign_folder(root / name)
        ws[name] = root / name
    ws["file"] = root / "a-file.txt"
    ws["file"].write_text("a file, not a folder")
    ws["empty"] = root / "empty"
    ws["empty"].mkdir()
    # A pruned checkpoint and a plain model directory whose weights were cut short (a copy interrupted).
    for name, source in (("cut-ckpt", shortgpt_checkpoint), ("cut-model", Path(smollm2_ref.location))):
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("*.safetensors"))
        for weights in source.glob("*.safetensors"):
            (root / name / weights.name).write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        ws[name] = root / name
    # A folder whose only result is corrupt, beside an older leaderboard's files.
    ws["corrupt"] = root / "corrupt"
    (ws["corrupt"] / "cells").mkdir(parents=True)
    (ws["corrupt"] / "cells" / "dense.json").write_text('{"schema_version": 3, "status": "ok"')
    for name in ("leaderboard.md", "leaderboard.png", "samples.md"):
        (ws["corrupt"] / name).write_text("# prunebench leaderboard\nan older one\n")
    # A result folder whose leaderboard.md is the user's own.
    ws["notes-run"] = root / "notes-run"
    (ws["notes-run"] / "cells").mkdir(parents=True)
    shutil.copy2(PUBLISHED / "cells" / "dense.json", ws["notes-run"] / "cells" / "dense.json")
    (ws["notes-run"] / "leaderboard.md").write_text("# My notes on the leaderboard\n")
    # A bench file asking for perplexity windows longer than the model's positions.
    ws["long_yaml"] = root / "long.yaml"
    ws["long_yaml"].write_text(yaml.safe_dump({"methods": ["dense"], "profile": "cpu-quick",
                                               "perplexity": {"seq_len": 100_000}}))
    ws["result"] = PUBLISHED / "cells" / "dense.json"
    ws["run"] = root / "run"  # a finished run of a published result, for publish --to
    (ws["run"] / "cells").mkdir(parents=True)
    shutil.copy2(PUBLISHED / "bench.json", ws["run"] / "bench.json")
    shutil.copy2(PUBLISHED / "cells" / "dense.json", ws["run"] / "cells" / "dense.json")
    (ws["run"] / "leaderboard.md").write_text("# prunebench leaderboard\n")
    return ws


F = ["foreign"]
CASES = [
    # --- what a command would have deleted or misplaced
    Case("prune --force over foreign files", ["prune", "--method", "shortgpt", "--sparsity", "0.25", "--out",
                                              "{foreign}", "--force"], "is not a pruned checkpoint", F),
    Case("prune over foreign files", ["prune", "--method", "shortgpt", "--sparsity", "0.25", "--out", "{foreign}"],
         "is not a pruned checkpoint", F),
    Case("export hf --force over foreign files", ["export", "{ckpt}", "--format", "hf", "--out", "{foreign}",
                                                  "--force"], "is not an HF export", F),
    Case("export gguf --force over a foreign file", ["export", "{ckpt}", "--format", "gguf", "--out", "{file}",
                                                     "--force"], "is not a GGUF file", ["file"]),
    Case("bench into foreign files", ["bench", "--methods", "dense", "--out", "{foreign}"],
         "holds files that are not a bench run", F),
    Case("publish --force over foreign files", ["publish", "{run}", "--to", "{foreign}", "--force"],
         "does not hold a published run", F),
    Case("repro into foreign files", ["repro", "{result}", "--out", "{foreign}"],
         "is not results of prunebench repro", F),
    Case("repro with a tolerance for no metric", ["repro", "{result}", "--tolerance", "perplexit=1e-2", "--out",
                                                  "{foreign}"], "--tolerance 'perplexit=1e-2': give METRIC=VALUE", F),
    Case("leaderboard over the user's own leaderboard.md", ["leaderboard", "{notes-run}"],
         "is not a prunebench leaderboard", ["notes-run"]),
    # --- empty strings
    Case("bench --out ''", ["bench", "--methods", "dense", "--out", ""], "--out is empty"),
    Case("prune --out ''", ["prune", "--method", "shortgpt", "--sparsity", "0.25", "--out", ""], "--out is empty"),
    Case("export --out ''", ["export", "{ckpt}", "--format", "hf", "--out", ""], "--out is empty"),
    Case("export ''", ["export", "", "--format", "hf", "--out", "{root}/x"], "CHECKPOINT is empty"),
    Case("repro --out ''", ["repro", "{result}", "--out", ""], "--out is empty"),
    Case("publish --to ''", ["publish", "{run}", "--to", ""], "--to is empty"),
    Case("leaderboard ''", ["leaderboard", ""], "DIRECTORY is empty"),
    Case("eval --model ''", ["eval", "--model", ""], "--model is empty"),
    Case("prune --model ''", ["prune", "--method", "shortgpt", "--sparsity", "0.25", "--model", ""],
         "--model is empty"),
    Case("bench --model ''", ["bench", "--model", ""], "--model is empty"),
    Case("bench --sparsity ''", ["bench", "--methods", "dense,shortgpt", "--sparsity", ""], "--sparsity is empty"),
    Case("bench --methods ''", ["bench", "--methods", ","], "--methods is empty"),
    Case("bench --seeds ''", ["bench", "--seeds", ""], "--seeds is empty"),
    # --- negative seeds, for every method
    *[Case(f"prune {m} --seed -1", ["prune", "--method", m, "--sparsity", "0.25", "--seed", "-1"],
           "'--seed': Input should be greater than or equal to 0") for m in method_names(include_reference=False)],
    Case("bench --seeds -1 (slicegpt)", ["bench", "--methods", "slicegpt", "--seeds", "-1"],
         "seeds are non-negative integers, got -1"),
    # --- what used to end in a traceback
    Case("eval of a cut checkpoint", ["eval", "--model", "{cut-ckpt}"], "is damaged: model.safetensors is"),
    Case("prune of a cut checkpoint", ["prune", "--method", "shortgpt", "--sparsity", "0.25", "--model",
                                       "{cut-ckpt}"], "is damaged: model.safetensors is"),
    Case("eval of a cut model directory", ["eval", "--model", "{cut-model}"], "is damaged: model.safetensors is"),
    Case("prune --out an existing file", ["prune", "--method", "shortgpt", "--sparsity", "0.25", "--out", "{file}"],
         "is a file; give a folder", ["file"]),
    Case("bench --out an existing file", ["bench", "--methods", "dense", "--out", "{file}"],
         "is a file; give a folder", ["file"]),
    Case("prune --out under a file", ["prune", "--method", "shortgpt", "--sparsity", "0.25", "--out", "{file}/sub"],
         "is a file, so nothing can be created under it", ["file"]),
    Case("bench --out under a file", ["bench", "--methods", "dense", "--out", "{file}/sub"],
         "is a file, so nothing can be created under it", ["file"]),
    Case("prune --out unwritable", ["prune", "--method", "shortgpt", "--sparsity", "0.25", "--out", "/sys/pb-x"],
         "nothing can be written in /sys"),
    Case("bench --out unwritable", ["bench", "--methods", "dense", "--out", "/sys/pb-x"],
         "nothing can be written in /sys"),
    # --- what used to be accepted silently
    Case("eval --seq-len beyond the positions", ["eval", "--seq-len", "100000"],
         "exceeds the model's 8192 positions"),
    Case("prune --seq-len beyond the positions", ["prune", "--method", "2ssp", "--sparsity", "0.25", "--seq-len",
                                                  "100000"], "a calibration sample of 100000 tokens exceeds"),
    Case("bench perplexity windows beyond the positions", ["bench", "--config", "{long_yaml}", "--out",
                                                           "{root}/long"], "perplexity: a sequence of 100000"),
    Case("leaderboard of an empty folder", ["leaderboard", "{empty}"], "no valid result under"),
    Case("leaderboard whose only result is corrupt", ["leaderboard", "{corrupt}"], "not readable JSON", ["corrupt"]),
    # --- click's own errors, one line too
    Case("an unknown flag", ["prune", "--methdo", "2ssp"], "No such option: --methdo"),
    Case("an unknown command", ["prunning"], "No such command 'prunning'"),
    Case("a flag without its value", ["eval", "--seq-len"], "Option '--seq-len' requires an argument"),
]


def _tree(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.real_model
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_before_any_work_and_leaves_files_alone(case, workspace):
    args = [a.format(**{k: str(v) for k, v in workspace.items()}) for a in case.args]
    before = {name: _tree(workspace[name]) for name in case.foreign}
    start = time.monotonic()
    result = CliRunner().invoke(app, args)
    took = time.monotonic() - start
    assert result.exit_code == 2, (case.id, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and case.message in lines[0], result.stderr
    assert took < UP_FRONT_S, f"{case.id}: refused only after {took:.0f} s"
    for name in case.foreign:
        assert _tree(workspace[name]) == before[name], f"{case.id}: {name} changed"
    assert not (workspace["root"] / "long").exists()


def test_a_failed_cells_reason_and_a_repaired_cache_entry_reach_the_console(tmp_path):
    """The bench console says why a cell failed and that its cached model was pruned again (not only its log)."""
    from harness.bench.config import CellSpec
    from harness.bench.executors import CellJob, Event
    from harness.bench.runner import outcome_lines
    from harness.results import CellResult, ErrorInfo, read_result, write_result

    recorded = read_result(PUBLISHED / "cells" / "shortgpt-s0.25-seed0.json")
    data = recorded.model_dump(mode="json")
    failed = CellResult.model_validate({**data, "status": "failed", "error": ErrorInfo(
        kind="invalid", message="SliceGPT cannot rotate gemma3_text: its norms\nsecond line").model_dump()})
    write_result(tmp_path / "failed.json", failed)
    job = CellJob(CellSpec.from_record(recorded.config), tmp_path / "x.spec.json", tmp_path / "failed.json",
                  tmp_path / "x.log", None)
    assert outcome_lines(Event("done", job, "failed")) == [
        "cell shortgpt-s0.25-seed0: failed: SliceGPT cannot rotate gemma3_text: its norms"]

    data["pruning"]["cache_repair"] = "corrupt (model.safetensors: 1000 bytes, expected 538090408)"
    write_result(tmp_path / "repaired.json", CellResult.model_validate(data))
    job.result_path = tmp_path / "repaired.json"
    ok, repair = outcome_lines(Event("done", job, "ok"))
    assert ok == "cell shortgpt-s0.25-seed0: ok"
    assert repair == ("cell shortgpt-s0.25-seed0: its cached pruned model was corrupt (model.safetensors: 1000 "
                      "bytes, expected 538090408); it was pruned again")


def test_force_replaces_what_the_command_wrote(tmp_path, shortgpt_checkpoint):
    """The other side of the table: an earlier checkpoint, export or leaderboard is replaced when asked."""
    from harness.outputs import check_replaceable, holds

    copy = tmp_path / "ckpt"
    shutil.copytree(shortgpt_checkpoint, copy)
    assert holds(copy, "checkpoint") and not holds(copy, "hf-export")  # an HF export --force keeps a checkpoint
    check_replaceable(copy, "checkpoint", force=True)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(16))
    check_replaceable(gguf, "gguf-export", force=True)
    hf = tmp_path / "hf"
    hf.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja"):
        (hf / name).write_text("{}")
    check_replaceable(hf, "hf-export", force=True)
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    shutil.copy2(PUBLISHED / "cells" / "dense.json", run / "cells" / "dense.json")
    result = CliRunner().invoke(app, ["leaderboard", str(run)])  # no leaderboard yet: written
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(app, ["leaderboard", str(run)]).exit_code == 0  # its own: replaced
    assert (run / "leaderboard.csv").read_text().startswith("model,row,")
