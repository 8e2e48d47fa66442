"""Calibration constructions and draws (docs/protocol.md, "Calibration data"), checked against the authors' rules
written out independently here, on real text and the embedded model's tokenizer."""

from __future__ import annotations

import random

import pytest
import torch

from harness.data.sources import JOIN, load_corpus
from harness.data.tokens import encode, per_document_samples, shuffled_documents
from harness.errors import DataUnavailable


@pytest.fixture(scope="module")
def tokenizer(smollm2_ref):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_ref.location)


@pytest.fixture(scope="module")
def documents():
    return list(load_corpus("enwiki-sample", "calibration").documents)


def authors_per_document(tokenizer, documents, n_samples, seq_len):
    """EvoPress's collect_samples_with_join, as read in the authors' code: a running tensor per sample."""
    data, current = [], torch.tensor([], dtype=torch.int64)
    newline = tokenizer("\n\n", return_tensors="pt", add_special_tokens=False).input_ids[0]
    for doc in documents:
        current = torch.cat([current, tokenizer(doc, return_tensors="pt", add_special_tokens=False).input_ids[0]])
        if current.numel() >= seq_len:
            data.append(current[:seq_len])
            current = torch.tensor([], dtype=torch.int64)
        else:
            current = torch.cat([current, newline])
        if len(data) >= n_samples:
            break
    return torch.stack(data)


def test_corpus_keeps_its_documents(documents):
    corpus = load_corpus("enwiki-sample", "calibration")
    assert len(corpus.documents) == corpus.protocol["documents"] > 50
    assert JOIN.join(corpus.documents) == corpus.text


def test_per_document_samples_are_the_authors(tokenizer, documents):
    samples, consumed = per_document_samples(tokenizer, documents, 6, 512)
    assert samples.shape == (6, 512)
    assert torch.equal(samples, authors_per_document(tokenizer, documents, 6, 512))
    # Each sample starts with a document's first tokens: not what consecutive chunks of the joined text give.
    joined = encode(tokenizer, JOIN.join(documents))
    assert torch.equal(samples[0], joined[:512])  # the first document is longer than 512 tokens here
    assert not torch.equal(samples[1], joined[512:1024])
    assert consumed >= 6 * 512


def test_per_document_with_too_few_documents_is_an_error(tokenizer, documents):
    with pytest.raises(DataUnavailable, match="per|one document"):
        per_document_samples(tokenizer, documents[:3], 50, 4096)


def test_shuffle_is_pythons_random_as_the_authors_seed_it():
    docs = [f"document {i}" for i in range(1000)]
    assert shuffled_documents(docs, 0) == docs  # their get_calibration shuffles only for a non-zero seed
    random.seed(3)  # their set_seed(seed), then random.shuffle of the indices
    order = list(range(1000))
    random.shuffle(order)
    assert shuffled_documents(docs, 3) == [docs[i] for i in order]
    assert shuffled_documents(docs, 3) != shuffled_documents(docs, 4)


def _job(seed: int = 0, **calibration):
    from harness import pruning
    from harness.data.tokens import Calibration

    spec = Calibration(source="enwiki-sample", samples=4, seq_len=64, **calibration)
    return pruning.PruneJob(method="2ssp", sparsity=0.25, model="smollm2-135m", profile="cpu-quick",
                            dtype="float32", device="cpu", calibration=spec, seed=seed)


@pytest.mark.real_model
def test_draws_what_a_seed_does_to_the_data(tokenizer, documents):
    from harness import pruning

    def samples(seed: int, draw: str):
        job = _job(seed=seed, draw=draw)
        return pruning.calibration_tokens(pruning.prepare(job), tokenizer)

    first, protocol = samples(0, "fixed")
    assert protocol["draw"] == "fixed" and protocol["document_order"] == "as stored"
    assert protocol["corpus_tokens"] > 400_000 and protocol["tokenizer"] == "fast"
    assert torch.equal(samples(7, "fixed")[0], first)  # the seed changes no data
    assert torch.equal(samples(0, "shuffle")[0], first)  # seed 0 keeps the order
    shuffled, protocol = samples(7, "shuffle")
    expected = encode(tokenizer, JOIN.join(shuffled_documents(documents, 7)))[: 4 * 64].reshape(4, 64)
    assert torch.equal(shuffled, expected) and not torch.equal(shuffled, first)
    assert protocol["document_order"] == "shuffled by Python random(7)"
    chunks, protocol = samples(7, "random-chunks")
    assert protocol["selection"] == "seeded random chunks" and not torch.equal(chunks, first)


@pytest.mark.real_model
def test_per_document_calibration_through_prepare(tokenizer, documents):
    from harness import pruning

    samples, protocol = pruning.calibration_tokens(pruning.prepare(_job(construction="per-document")), tokenizer)
    assert torch.equal(samples, authors_per_document(tokenizer, documents, 4, 64))
    assert protocol["construction"] == "per-document" and protocol["corpus_tokens"] >= 4 * 64


def test_evopress_reference_amount_depends_on_the_family():
    from methods import get_method

    for name in ("evopress", "evopress-block"):
        method = get_method(name)
        needs = {t: method.calibration_needs("full", t, "per-document") for t in ("llama", "phi3", "qwen2", "mistral",
                                                                                  "gemma3_text")}
        assert {t: (n.samples, n.seq_len) for t, n in needs.items()} == {
            "llama": (32, 4096), "phi3": (32, 4096), "qwen2": (64, 2048), "mistral": (16, 8192),
            "gemma3_text": (16, 8192)}
        # Joined chunks and the quick protocol keep their declared amounts.
        assert method.calibration_needs("full", "llama", "joined") == method.calibration["full"]
        assert method.calibration_needs("quick", "llama", "per-document") == method.calibration["quick"]
    twossp = get_method("2ssp")
    assert twossp.calibration_needs("full", "llama", "per-document") == twossp.calibration["full"]


def test_bench_resolves_the_per_document_amount_from_the_model(smollm2_ref):
    from harness.bench.config import make_config
    from harness.bench.expand import resolve

    cfg = make_config({"calibration": {"construction": "per-document"}},
                      {"methods": ["evopress", "2ssp"], "profile": "paper", "out": None})
    cells = {c.method: c.calibration for c in resolve(cfg).cells}
    assert (cells["evopress"].samples, cells["evopress"].seq_len) == (32, 4096)  # SmolLM2 is a Llama
    assert (cells["2ssp"].samples, cells["2ssp"].seq_len) == (32, 2048)
    assert cells["evopress"].construction == "per-document" and cells["evopress"].draw == "fixed"


def test_calibration_preset_shuffles_documents_unless_told_otherwise(smollm2_ref):
    from harness.bench.config import make_config
    from harness.bench.expand import resolve

    cells = resolve(make_config({}, {"preset": "calibration", "profile": "cpu-quick"})).cells
    assert {c.calibration.draw for c in cells} == {"shuffle"} and {c.seed for c in cells} == {0, 1, 2, 3, 4}
    cells = resolve(make_config({"calibration": {"draw": "random-chunks"}},
                                {"preset": "calibration", "profile": "cpu-quick"})).cells
    assert {c.calibration.draw for c in cells} == {"random-chunks"}


@pytest.mark.parametrize("settings, message", [
    ({"calibration": {"draw": "sometimes"}}, "calibration.draw"),
    ({"calibration": {"construction": "by-the-page"}}, "calibration.construction"),
    ({"calibration": {"construction": "per-document", "draw": "random-chunks"}}, "random-chunks"),
    ({"numerics": "approximate"}, "numerics"),
    ({"tokenizer": "medium"}, "tokenizer"),
])
def test_bad_settings_are_one_line(settings, message):
    from harness.bench.config import make_config
    from harness.errors import PrunebenchError

    with pytest.raises(PrunebenchError, match=message):
        make_config(settings, {})


@pytest.mark.real_model
def test_report_also_counts_as_the_reference_harness(smollm2):
    """The norms of removed attention modules are freed; the report also gives the reference's count (kept)."""
    from harness import pruning
    from harness.data.tokens import Calibration

    report = pruning.execute(pruning.prepare(_job()), loaded=smollm2).report
    removed = report.decisions["removed_attention"]
    blocks = report.parameters_before["blocks"]
    assert len(removed) == 2  # round(30 * 0.25 ** 2)
    assert report.achieved_sparsity_norms_kept == pytest.approx(report.achieved_sparsity - 2 * 576 / blocks,
                                                                rel=0, abs=1e-12)
    shortgpt = pruning.PruneJob(method="shortgpt", sparsity=0.25, model="smollm2-135m", profile="cpu-quick",
                                dtype="float32", device="cpu",
                                calibration=Calibration(source="enwiki-sample", samples=2, seq_len=64))
    from harness.models import load_model

    fresh = load_model(smollm2.ref, dtype="float32", device="cpu")
    assert pruning.execute(pruning.prepare(shortgpt), loaded=fresh).report.achieved_sparsity_norms_kept is None


def test_auto_dtype_is_the_papers_per_family_on_cuda():
    from harness.models import resolve_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # a device object needs no GPU
    assert resolve_dtype("auto", cuda, "mistral") == torch.float16
    assert {resolve_dtype("auto", cuda, t) for t in ("llama", "qwen2", "phi3", "gemma3_text")} == {torch.bfloat16}
    assert resolve_dtype("auto", cpu, "mistral") == torch.float32
    assert resolve_dtype("bfloat16", cuda, "mistral") == torch.bfloat16  # asked for: kept


def test_settings_added_later_keep_older_hashes_only_where_they_compute_the_same():
    """numerics exact, tokenizer fast, joined construction and (at seed 0) the fixed draw compute what the code
    before them did: they leave a cell's hash as it was; any other value, or a fixed draw at another seed
    (the old rule drew random chunks there), gives another hash, so a bench never resumes what differs."""
    from harness.hashing import hashed_config

    old = {"id": "x", "seed": 0, "calibration": {"source": "enwiki-sample", "samples": 8, "seq_len": 128}}
    new = {**old, "numerics": "exact", "tokenizer": "fast",
           "calibration": {**old["calibration"], "construction": "joined", "draw": "fixed"}}
    assert hashed_config(new) == hashed_config(old)
    for change in ({"numerics": "reference"}, {"tokenizer": "slow"}, {"seed": 1},
                   {"calibration": {**new["calibration"], "construction": "per-document"}},
                   {"calibration": {**new["calibration"], "draw": "shuffle"}}):
        assert hashed_config({**new, **change}) != hashed_config({**old, **{k: v for k, v in change.items()
                                                                            if k == "seed"}}), change
