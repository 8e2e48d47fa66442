"""The command line: perplexity with its protocol, pruning end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model


def cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


@pytest.mark.real_model
def test_eval_prints_perplexity_with_its_protocol(smollm2_ref):
    result = cli("eval", "--dataset", "enwiki-sample", "--seq-len", "256", "--max-windows", "4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 10 < report["perplexity"] < 60  # dense SmolLM2 on Wikipedia text
    p = report["protocol"]
    assert (p["windows"], p["seq_len"], p["targets"], p["bos"], p["join"]) == (4, 256, 4 * 255, "none", "\n\n")
    assert p["role"] == "evaluation" and p["data"]["text_sha256"] and p["corpus_tokens"] > 100_000
    assert report["interval"]["low"] < report["perplexity"] < report["interval"]["high"]
    text = cli("eval", "--dataset", "enwiki-sample", "--seq-len", "256", "--max-windows", "2")
    assert text.returncode == 0 and text.stdout.startswith("perplexity ") and "BOS none" in text.stdout


@pytest.mark.real_model
def test_eval_records_numerics_and_tokenizer(smollm2_ref):
    """The reference's arithmetic and tokenizer: named in the protocol; on SmolLM2 the slow tokenizer gives the
    fast one's tokens, and bf16 arithmetic rounds the perplexity."""
    args = ("eval", "--dataset", "enwiki-sample", "--seq-len", "256", "--max-windows", "2", "--dtype", "bfloat16",
            "--json")
    exact = json.loads(cli(*args).stdout)
    result = cli(*args, "--numerics", "reference", "--tokenizer", "slow")
    assert result.returncode == 0, result.stderr
    reference = json.loads(result.stdout)
    p = reference["protocol"]
    assert p["numerics"] == "reference" and p["tokenizer"].startswith("slow: GPT2Tokenizer's rules, byte-level BPE")
    assert exact["protocol"]["numerics"] == "exact" and exact["protocol"]["tokenizer"] == "fast"
    assert p["corpus_tokens"] == exact["protocol"]["corpus_tokens"]
    assert reference["perplexity"] != exact["perplexity"]
    assert abs(reference["perplexity"] / exact["perplexity"] - 1) < 0.02
    # bf16 keeps 8 bits of mantissa: the reference's perplexity is a multiple of 2**(e - 7) for its exponent e.
    mantissa = torch.tensor(reference["perplexity"]).frexp().mantissa.item() * 2**8
    assert mantissa == int(mantissa)


def test_gemma_gets_bos_per_window_and_it_is_recorded(tmp_path, smollm2_ref):
    """A tiny Gemma-3 with the SmolLM2 tokenizer: BOS is prepended to every window, the same tokens are scored."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(smollm2_ref.location)
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gemma")
    tok.save_pretrained(tmp_path / "gemma")
    result = cli("eval", "--model", str(tmp_path / "gemma"), "--dataset", "pydoc", "--seq-len", "64",
                 "--max-windows", "3", "--json")
    assert result.returncode == 0, result.stderr
    p = json.loads(result.stdout)["protocol"]
    assert p["bos"] == "prepended to every window, context only" and p["targets"] == 3 * 63


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "--model", "nosuch-org/nosuch-model"], "is not in the local Hugging Face cache ("),
    (["eval", "--dataset", "nosuchdata"], "nosuchdata"),
    (["eval", "--dataset", "text:/nonexistent/file.txt"], "/nonexistent/file.txt"),
    (["eval", "--model", "./no/such/dir"], "model directory './no/such/dir' does not exist"),
    (["prune", "--method", "nosuch", "--sparsity", "0.3"], "unknown method 'nosuch'"),
    (["prune", "--method", "2ssp", "--sparsity", "1.2"], "sparsity must be strictly between 0 and 1"),
    (["prune", "--method", "2ssp", "--sparsity", "0.3", "--option", "alpha=-2"], "option 'alpha'"),
    (["prune", "--method", "shortgpt", "--sparsity", "0.3", "--alpha", "2"], "--alpha applies to 2ssp only"),
    (["methods", "nosuch"], "unknown method 'nosuch'"),
    (["bench", "--methods", "dense", "--export", "hf,nosuch"], "unknown export format 'nosuch'; choose "),
    (["bench", "--methods", "dense", "--export", "hf", "--executor", "ray"],
     "the ray executor keeps only a cell's result"),
    (["eval", "--numerics", "approximate"], "unknown numerics 'approximate'; choose exact or reference"),
    (["eval", "--tokenizer", "medium"], "unknown tokenizer 'medium'; choose fast or slow"),
    (["prune", "--method", "2ssp", "--sparsity", "0.3", "--numerics", "half"], "unknown numerics 'half'"),
    (["prune", "--method", "2ssp", "--sparsity", "0.3", "--calib-draw", "sometimes"],
     "unknown calibration draw 'sometimes'"),
    (["prune", "--method", "evopress", "--sparsity", "0.3", "--calib-construction", "per-document",
      "--calib-draw", "random-chunks"], "needs construction 'joined'"),
    (["prune", "--method", "2ssp", "--sparsity", "0.3", "--calib-samples", "0"],
     "Invalid value for '--calib-samples'"),
    (["bench", "--methods", "2ssp", "--calib-construction", "by-page"], "calibration.construction"),
    (["bench", "--methods", "2ssp", "--tokenizer", "medium"], "bench setting 'tokenizer'"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = cli(*args, env={"HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "2ssp", "--sparsity", "0.1", "--n-attn", "30"], "2SSP cannot reach sparsity 0.1"),
    (["--method", "blockpruner-block", "--sparsity", "0.99"], "BlockPruner (whole blocks) cannot reach sparsity 0.99"),
    (["--method", "evopress-block", "--sparsity", "0.99"], "EvoPress-block cannot reach sparsity 0.99"),
    (["--method", "slicegpt", "--sparsity", "0.05"], "SliceGPT: slicing fraction 0.05 keeps width 544 of 576"),
])
def test_an_infeasible_target_is_refused_before_loading_anything(args, message, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    result = CliRunner().invoke(app, ["prune", *args], env={**os.environ, "PRUNEBENCH_CACHE": str(tmp_path)})
    assert result.exit_code == 2
    assert message in result.stderr
    assert "slicing" in message or "feasible range here: " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()  # the embedded model was not converted, let alone loaded


def test_methods_lists_every_method_and_one_methods_options():
    listing = cli("methods", timeout=300)
    assert listing.returncode == 0
    from methods import method_names

    assert [line.split()[0] for line in listing.stdout.splitlines()] == list(method_names())
    options = cli("methods", "2ssp", timeout=300)
    assert options.returncode == 0
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in options.stdout.splitlines()[3:]}
    assert rows["alpha"] == "1.5" and rows["screen_vocab"] == "0.125" and rows["n_attn"] == "None"


def test_an_unknown_hub_id_without_the_hub_is_one_line():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    result = subprocess.run([sys.executable, "-m", "harness.cli", "eval", "--model", "nosuch-org/nosuch-model"],
                            capture_output=True, text=True, timeout=300, env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert ("is not a local directory, the Hugging Face hub (http://127.0.0.1:9) does not answer and the local "
            "Hugging Face cache") in result.stderr and "offline models: smollm2-135m" in result.stderr


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(tmp_path / "bert")
    result = cli("eval", "--model", str(tmp_path / "bert"), "--dataset", "pydoc", timeout=300)
    assert result.returncode == 2
    assert "is a bert (BertForMaskedLM), not a causal language model" in result.stderr


def test_an_unsupported_architecture_is_refused_by_name(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    result = cli("eval", "--model", str(tmp_path / "gpt2"), "--dataset", "pydoc", timeout=300)
    assert result.returncode == 2
    assert "architecture 'gpt2' is not supported; supported: gemma3_text, llama, mistral, phi3, qwen2" in result.stderr


@pytest.mark.real_model
def test_prune_saves_a_checkpoint_that_prunebench_and_one_line_python_reload(tmp_path, smollm2):
    out = tmp_path / "pruned"
    result = cli("prune", "--method", "2ssp", "--sparsity", "0.25", "--calib-data", "enwiki-sample",
                 "--calib-samples", "2", "--seq-len", "64", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert abs(report["achieved_sparsity"] - 0.25) < 0.005 and report["checkpoint"] == str(out)
    assert set(report["stages"]) >= {"stage1.calibration_forward", "stage2.search", "stage2.surgery"}
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert size < 0.85 * 4 * smollm2.model.num_parameters()  # float32 bytes of the dense model
    from harness import load_pruned

    x = torch.randint(0, 1000, (1, 16))
    with torch.no_grad():
        a = load_pruned(out)(x).logits
    # prunebench itself reloads the directory as a model: its perplexity runs on the pruned structure.
    again = cli("eval", "--model", str(out), "--dataset", "enwiki-sample", "--seq-len", "128", "--max-windows", "2",
                "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["perplexity"] > 1
    from harness.models import load_model, resolve_model

    with torch.no_grad():
        assert torch.equal(load_model(resolve_model(str(out)), dtype="float32", device="cpu").model(x).logits, a)
    refused = cli("prune", "--method", "2ssp", "--sparsity", "0.25", "--out", str(out))
    assert refused.returncode == 2 and "holds a pruned checkpoint" in refused.stderr and "--force" in refused.stderr


def test_tiny_model_directory_prunes_through_the_cli(tmp_path, smollm2_ref):
    """Any local directory of a supported architecture works, not only the embedded model."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_ref.location)
    model = tiny_model("qwen2", layers=4)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(tmp_path / "qwen")
    tok.save_pretrained(tmp_path / "qwen")
    result = cli("prune", "--model", str(tmp_path / "qwen"), "--method", "2ssp", "--sparsity", "0.3", "--calib-data",
                 "pydoc", "--calib-samples", "2", "--seq-len", "32", "--json", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["model"]["kind"] == "local"


def unreadable_weights(checkpoint: Path, dest: Path, cut: int = 0) -> Path:
    """A copy of a checkpoint whose weights are zeros of the recorded size (less ``cut`` bytes): it passes the
    size check and fails to load, so a refusal from it shows that no weight was read before."""
    shutil.copytree(checkpoint, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    for file in checkpoint.glob("*.safetensors"):
        with open(dest / file.name, "wb") as f:
            f.truncate(file.stat().st_size - cut)
    return dest


@pytest.fixture(scope="module")
def export_inputs(shortgpt_checkpoint, twossp_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-inputs")
    (root / "plain").mkdir()
    (root / "plain" / "config.json").write_text("{}")
    (root / "existing").mkdir()
    (root / "existing" / "keep.txt").write_text("mine")
    return {"root": root, "plain": root / "plain", "existing": root / "existing",
            "short": unreadable_weights(shortgpt_checkpoint, root / "short"),
            "2ssp": unreadable_weights(twossp_checkpoint, root / "2ssp"),
            "cut": unreadable_weights(shortgpt_checkpoint, root / "cut", cut=1)}


def _tree(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*"))}


@pytest.mark.real_model
@pytest.mark.parametrize(("case", "args", "message"), [
    ("not a checkpoint", ["plain", "--format", "hf", "--out", "new"],
     "is not a pruned checkpoint (no prunebench.json)"),
    ("unknown format", ["short", "--format", "onnx", "--out", "new"], "unknown export format 'onnx'; choose "),
    ("unknown dtype", ["short", "--format", "hf", "--dtype", "int4", "--out", "new"],
     "format 'hf' has no dtype 'int4'; choose float32, bfloat16, float16"),
    ("a model hf cannot hold", ["2ssp", "--format", "hf", "--out", "new"], "as hf: layers "),
    ("--out holds foreign files", ["short", "--format", "hf", "--out", "existing", "--force"],
     "exists and is not an HF export (prunebench export --format hf): it is left alone"),
    ("--out in the checkpoint", ["short", "--format", "hf", "--out", "short/hf"], "is inside the checkpoint"),
    ("--out holds the checkpoint", ["short", "--format", "hf", "--out", "root", "--force"], "contains the checkpoint"),
    ("a cut weight file", ["cut", "--format", "hf", "--out", "new"], "is damaged: model.safetensors: "),
])
def test_bad_export_input_is_one_line_exit_2_and_writes_nothing(export_inputs, case, args, message):
    from typer.testing import CliRunner

    from harness.cli import app

    root = export_inputs["root"]
    paths = {**{k: str(v) for k, v in export_inputs.items()}, "new": str(root / "new"),
             "short/hf": str(root / "short" / "hf")}
    before = _tree(root)
    result = CliRunner().invoke(app, ["export", *(paths.get(a, a) for a in args)])
    assert result.exit_code == 2, (case, result.stderr, result.exception)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _tree(root) == before  # nothing written, nothing removed
    if case == "a model hf cannot hold":
        from harness.export import FORMATS

        assert "have no attention" in result.stderr
        assert ("; format gguf can hold it" if "gguf" in FORMATS else "; no export format can hold it") in result.stderr


@pytest.mark.real_model
def test_the_unreadable_copies_would_fail_if_their_weights_were_read(export_inputs):
    """The control of the test above: past every check, the zeroed weights make the export fail."""
    from typer.testing import CliRunner

    from harness.cli import app

    out = export_inputs["root"] / "control"
    result = CliRunner().invoke(app, ["export", str(export_inputs["short"]), "--format", "hf", "--out", str(out)])
    assert result.exit_code not in (0, 2) and result.exception is not None
    assert not out.exists()


@pytest.mark.real_model
def test_export_writes_a_transformers_directory_and_prints_what_it_wrote(shortgpt_checkpoint, tmp_path):
    from harness.export.base import file_digest

    out = tmp_path / "model.hf"
    done = cli("export", str(shortgpt_checkpoint), "--format", "hf", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["path"] == str(out) and report["checkpoint"] == str(shortgpt_checkpoint)
    assert (report["bytes"], report["sha256"]) == file_digest(out) and report["dtype"] == "float32"
    assert report["seconds"] > 0 and any("from_pretrained" in note for note in report["notes"])
    refused = cli("export", str(shortgpt_checkpoint), "--format", "hf", "--out", str(out))
    assert refused.returncode == 2 and "holds an HF export" in refused.stderr and "pass --force" in refused.stderr
    assert file_digest(out) == (report["bytes"], report["sha256"])
    again = cli("export", str(shortgpt_checkpoint), "--format", "hf", "--out", str(out), "--force",
                "--dtype", "bfloat16")
    assert again.returncode == 0, again.stderr[-2000:]
    first, sha, *notes = again.stdout.splitlines()
    assert first.startswith(f"exported {shortgpt_checkpoint} as hf (bfloat16) to {out}: ") and first.endswith(" s")
    assert sha == f"  sha256 {file_digest(out)[1]}" and any("from_pretrained" in n for n in notes)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert not list(tmp_path.glob(".*"))  # no temporary sibling left behind


def test_export_is_in_the_help_with_its_formats():
    from typer.testing import CliRunner

    from harness.cli import app

    assert "export" in CliRunner().invoke(app, ["--help"]).stdout
    text = CliRunner().invoke(app, ["export", "--help"]).stdout
    assert "--format" in text and "gguf" in text and "--force" in text
    assert "--export" in CliRunner().invoke(app, ["bench", "--help"]).stdout
