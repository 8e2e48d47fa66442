"""Recovery fine-tuning (harness.recovery) on the real SmolLM2-135M, pruned by 2SSP (the session's checkpoint).

The trainings here are a few steps of short samples: they check what recovery must guarantee (the loss goes
down, the merge gives back the pruned structure, the checkpoint reloads exactly, llama.cpp runs it, text shared
with the evaluation is refused), not how much a real budget heals (docs/recovery.md measures that).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from harness.checkpoint import load_pruned, read_manifest
from harness.cli import app
from harness.data.sources import load_corpus
from harness.errors import PrunebenchError
from harness.recovery import stage
from harness.recovery.data import TrainingText, check_disjoint
from harness.recovery.train import recover, structure

TINY = {"steps": 2, "batch_size": 2, "micro_batch_size": 2, "seq_len": 32, "warmup_steps": 0}


def _one_line_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--rank", "0"], "recovery.rank"),
    (["--steps", "-5"], "recovery.steps"),
    (["--targets", "q_proj,gate_projection"], "'gate_projection' is not a linear layer"),
    (["--batch-size", "6", "--micro-batch-size", "4"], "not a multiple"),
])
def test_bad_settings_are_one_line_exit_2_before_any_model_loads(flags, message, tmp_path, monkeypatch):
    import harness.checkpoint

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(harness.checkpoint, "load_pruned", no_loading)
    checkpoint = tmp_path / "ckpt"  # the unknown target needs the model type: a manifest alone gives it
    checkpoint.mkdir()
    (checkpoint / "prunebench.json").write_text(json.dumps(
        {"format": "prunebench-pruned-model", "format_version": 1, "model_type": "llama"}))
    _one_line_exit_2(["recover", str(checkpoint), "--out", str(tmp_path / "out"), *flags], message)


def test_training_text_that_shares_the_evaluation_text_is_refused_in_one_line(twossp_checkpoint, tmp_path):
    evaluation = load_corpus("enwiki-sample", "evaluation")
    leaked = tmp_path / "leaked.txt"
    leaked.write_text("An unrelated first paragraph of the user's own notes, long enough to count.\n\n"
                      + evaluation.documents[3])
    _one_line_exit_2(["recover", str(twossp_checkpoint), "--out", str(tmp_path / "out"), "--profile", "cpu-quick",
                      "--data", f"text:{leaked}"], "shares")
    with pytest.raises(PrunebenchError, match="evaluation text of 'enwiki-sample'"):
        check_disjoint(load_corpus(f"text:{leaked}", "calibration"), [evaluation])
    # the offline split itself is disjoint: the calibration part passes
    check_disjoint(load_corpus("enwiki-sample", "calibration"), [evaluation])


def _loss(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def test_a_recovery_step_lowers_the_training_loss(twossp_checkpoint, enwiki_tokens):
    adapter, _, _ = stage.load_checkpoint(twossp_checkpoint, torch.float32, "cpu")
    plan = stage.plan("cpu-quick", {}, "llama", [])
    chunks = enwiki_tokens[0][: 2 * 64].reshape(2, 64)  # calibration text
    before = _loss(adapter.model, chunks)
    config = plan.config.model_copy(update={"steps": 1, "batch_size": 2, "micro_batch_size": 2, "seq_len": 64,
                                            "warmup_steps": 0, "lr": 1e-3, "dropout": 0.0})
    report = recover(adapter, TrainingText(chunks, {}), config, plan.follows)
    after = _loss(adapter.model, chunks)
    assert report.loss_first == pytest.approx(before, rel=1e-4)
    assert after < before - 0.05, (before, after)


@pytest.fixture(scope="module")
def recovered(twossp_checkpoint, tmp_path_factory):
    """The 2SSP checkpoint recovered for two tiny steps, in memory and saved."""
    adapter, tokenizer, manifest = stage.load_checkpoint(twossp_checkpoint, torch.float32, "cpu")
    pruned = structure(adapter)
    plan = stage.plan("cpu-quick", TINY, "llama", ["enwiki-sample"])
    report = stage.run(plan, adapter, tokenizer)
    saved = stage.save_recovered(adapter, tokenizer, tmp_path_factory.mktemp("recovered") / "ckpt", manifest, report)
    return adapter, tokenizer, pruned, report, saved


def test_the_merged_checkpoint_reloads_with_identical_logits_and_the_pruned_structure(recovered, twossp_checkpoint):
    adapter, tokenizer, pruned, report, saved = recovered
    ids = tokenizer("The history of the region begins with", return_tensors="pt")["input_ids"]
    reloaded = load_pruned(saved)
    with torch.no_grad():
        assert torch.equal(adapter.model(ids).logits, reloaded(ids).logits)
        assert not torch.equal(load_pruned(twossp_checkpoint)(ids).logits, reloaded(ids).logits)  # it did train
    assert structure(adapter) == pruned  # no removed module came back, no adapter stayed
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    before, after = read_manifest(twossp_checkpoint), read_manifest(saved)
    assert after["ops"] == before["ops"] and after["parameters"] == before["parameters"]
    assert after["prune_report"] == before["prune_report"]
    assert after["recovery"]["data"]["role"] == "calibration" and after["recovery"]["data"]["source"] == "enwiki-sample"
    assert len(report.loss_curve) == 2 and all(math.isfinite(x) for x in report.loss_curve)
    assert report.tokens == 2 * 2 * 32 and report.tokens_per_second > 0 and report.modules > 0


def test_the_gguf_of_a_recovered_2ssp_model_agrees_with_prunebench_in_llama_cpp(recovered, enwiki_tokens, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test` (pyproject extra 'engine')")
    from harness.export import export
    from tests.conftest import windows_perplexity
    from tests.test_export_gguf import Engine

    adapter, _, _, _, saved = recovered
    export(saved, "gguf", tmp_path / "recovered.gguf", dtype="f32")
    windows = enwiki_tokens[1][: 2 * 128].reshape(2, 128)
    ours = windows_perplexity(adapter, windows)
    engine = Engine(tmp_path / "recovered.gguf")
    try:
        theirs = engine.perplexity(windows)
    finally:
        engine.close()
    assert abs(theirs / ours - 1) < 2e-3, (ours, theirs)


def test_prunebench_recover_writes_a_recovered_checkpoint(twossp_checkpoint, tmp_path):
    out, notes = tmp_path / "healed", tmp_path / "notes.txt"
    notes.write_text("A short text of the user's own, in one paragraph, that no evaluation article contains.\n" * 4)
    result = CliRunner().invoke(app, ["recover", str(twossp_checkpoint), "--out", str(out), "--profile", "cpu-quick",
                                      "--data", f"text:{notes}",
                                      "--steps", "1", "--batch-size", "1", "--micro-batch-size", "1", "--seq-len", "16",
                                      "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["steps"] == 1
    assert read_manifest(out)["recovery"]["settings"]["seq_len"] == 16
    _one_line_exit_2(["recover", str(twossp_checkpoint), "--out", str(out)], "pass --force")
