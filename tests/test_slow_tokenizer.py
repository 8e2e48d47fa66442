"""The slow tokenizer (harness.slow_tokenizer): transformers 4's Python tokenization of corpus text, checked against
the fast tokenizers of transformers 5 and against the SentencePiece library itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from harness.data.sources import load_corpus
from harness.data.tokens import tokenize
from harness.errors import ModelUnavailable, PrunebenchError
from harness.slow_tokenizer import (
    AddedToken,
    AddedTokenSplitter,
    SlowTokenizer,
    UnsupportedTokenizer,
    bytes_to_unicode,
    load_slow_tokenizer,
)
from tests.localhub.pytest_fixtures import RESULT, hub_run, local_hub  # noqa: F401 (fixtures)

# Digits, accents, CJK, an emoji, runs of spaces and newlines, tabs, \r\n, contractions in both cases, and added
# tokens inside words and lines.
TRICKY = ("Hello  world!\n\n  It's 2024: 1234567 apples, 3.14 and ½ ⅷ; café naïve cafe\u0301 東京 😀 "
          "<|endoftext|>next\tline's   end \r\n I'LL we've  <|im_start|>user\n\u00a0\u2003x \u3000 y   \n")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
LLAMA3_REGEX = QWEN2_REGEX.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
SP_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def fast_ids(fast, text: str) -> list[int]:
    return list(fast(text, add_special_tokens=False)["input_ids"])


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# --- byte-level BPE: the embedded SmolLM2 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_fast(smollm2_ref):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_ref.location)


@pytest.fixture(scope="module")
def smollm2_slow(smollm2_fast, smollm2_ref) -> SlowTokenizer:
    return load_slow_tokenizer(smollm2_fast, smollm2_ref.location)


def test_drop_in_where_corpus_text_is_tokenized(smollm2_slow, smollm2_fast):
    slow = smollm2_slow
    assert slow.is_fast is False and slow.fast is smollm2_fast
    assert (slow.bos_token_id, slow.eos_token_id) == (smollm2_fast.bos_token_id, smollm2_fast.eos_token_id)
    assert slow.describe() == "slow: GPT2Tokenizer's rules, byte-level BPE by the tokenizers library on tokenizer.json"
    encoded = slow("a b", add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False,
                   verbose=False)
    assert isinstance(encoded["input_ids"], list) and "attention_mask" not in encoded
    batch = slow(["a b", "c"], add_special_tokens=False)["input_ids"]
    assert batch == [fast_ids(smollm2_fast, text) for text in ("a b", "c")]
    # SmolLM2's fast tokenizer adds no special tokens; the slow one follows it.
    assert slow.encode("x y") == smollm2_fast("x y")["input_ids"]
    assert slow.decode(slow.encode("Hello, world")) == "Hello, world"
    with pytest.raises(PrunebenchError, match="return_tensors"):
        slow("x", return_tensors="pt")


def test_tricky_text_matches_fast(smollm2_slow, smollm2_fast):
    ids = smollm2_slow.encode(TRICKY, add_special_tokens=False)
    assert ids == fast_ids(smollm2_fast, TRICKY)
    assert 0 in ids and 1 in ids  # <|endoftext|> and <|im_start|> came out as their own ids


def test_enwiki_evaluation_text_matches_fast(smollm2_slow, smollm2_fast):
    corpus = load_corpus("enwiki-sample", "evaluation")
    slow = tokenize(smollm2_slow, corpus)
    assert torch.equal(slow, tokenize(smollm2_fast, corpus))
    assert slow.numel() > 100_000


def test_bytes_missing_from_the_vocab_are_unknown_not_dropped(smollm2_slow, smollm2_fast):
    """The one difference a sweep of every code point in context found: SmolLM2's vocab lacks the byte characters
    of U+0004, U+0006, U+0013, U+0014, U+0016, U+001D and of the lead bytes 0xF1 / 0xF2 (the unassigned planes
    4-11). The fast tokenizer (no unk_token in its BPE model) drops them; GPT2Tokenizer gave the unknown token."""
    vocab = smollm2_fast.get_vocab()
    missing = [byte for byte, char in bytes_to_unicode().items() if char not in vocab]
    assert {0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2} <= set(missing)
    unk = smollm2_fast.unk_token_id
    assert fast_ids(smollm2_fast, "a\x04b") == [81, 82]
    assert smollm2_slow.encode("a\x04b", add_special_tokens=False) == [81, unk, 82]
    # U+40000 is four bytes F1 80 80 80: the lead byte is unknown, the continuation bytes are tokens.
    slow, fast = smollm2_slow.encode("\U00040000", False), fast_ids(smollm2_fast, "\U00040000")
    assert slow == [unk, *fast]


def test_added_token_flags_edit_the_neighbours():
    """transformers 4's rules: rstrip eats the whitespace after a token, lstrip the whitespace before it,
    single_word glues a token that touches a word to that word (which is then ordinary text)."""
    tokens = [AddedToken("<r>", 10, rstrip=True), AddedToken("<l>", 11, lstrip=True),
              AddedToken("<w>", 12, single_word=True), AddedToken("<ww>", 13)]
    split = AddedTokenSplitter(tokens).split
    assert split("a <r>  b") == ["a ", "<r>", "b"]
    assert split("a  <l> b") == ["a", "<l>", " b"]
    assert split("a <w> b") == ["a ", "<w>", " b"]
    assert split("a<w> b") == ["a<w>", " b"]
    assert split("a <w>b") == ["a ", "<w>b"]
    assert split("<ww><w>") == ["<ww><w>"]  # as transformers 4: the neighbour is a token's text, glued anyway
    assert split("x<ww>y") == ["x", "<ww>", "y"]  # the longest token at the leftmost place
    assert AddedTokenSplitter([]).split("") == []


# --- byte-level BPE: pre-tokenizers and options of other models, against tokenizers on the same tokenizer.json ---


def bpe_variant(smollm2_dir: str, target: Path, pre_tokenizer: dict, **changes) -> Path:
    """SmolLM2's tokenizer with another pre-tokenizer (and normalizer / model options) in ``target``."""
    target.mkdir()
    spec = json.loads((Path(smollm2_dir) / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = pre_tokenizer
    spec["normalizer"] = changes.pop("normalizer", spec["normalizer"])
    spec["model"].update(changes)
    (target / "tokenizer.json").write_text(json.dumps(spec))
    shutil.copy(Path(smollm2_dir) / "tokenizer_config.json", target)
    return target


def split(pattern: dict, behavior: str = "Isolated", invert: bool = False) -> dict:
    return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
VARIANTS = {
    "qwen2": ({"type": "Sequence", "pretokenizers": [split({"Regex": QWEN2_REGEX}), BYTE_LEVEL]},
              {"normalizer": {"type": "NFC"}}),
    "llama3": ({"type": "Sequence", "pretokenizers": [split({"Regex": LLAMA3_REGEX}), BYTE_LEVEL]},
               {"ignore_merges": True}),
    "digits": ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                      dict(BYTE_LEVEL, use_regex=True)]}, {}),
    "digit-runs": ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": False},
                                                          dict(BYTE_LEVEL, use_regex=True)]}, {}),
    "merged-with-previous": ({"type": "Sequence", "pretokenizers": [
        split({"String": " "}, "MergedWithPrevious"), BYTE_LEVEL]}, {}),
    "merged-with-next": ({"type": "Sequence", "pretokenizers": [split({"Regex": r"\s+"}, "MergedWithNext"),
                                                                BYTE_LEVEL]}, {"merges": None}),
    "contiguous-inverted": ({"type": "Sequence", "pretokenizers": [split({"Regex": r"\p{L}"}, "Contiguous", True),
                                                                   BYTE_LEVEL]}, {}),
    "removed": ({"type": "Sequence", "pretokenizers": [split({"Regex": r"[,;]"}, "Removed"), BYTE_LEVEL]}, {}),
}


def reference_ids(directory: Path, text: str) -> list[int]:
    """What the tokenizers library (transformers 5's fast backend) makes of ``directory``'s tokenizer.json."""
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(directory / "tokenizer.json")).encode(text, add_special_tokens=False).ids)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pre_tokenizers_match_tokenizers_on_the_same_file(variant, smollm2_ref, smollm2_fast, tmp_path):
    pre_tokenizer, changes = VARIANTS[variant]
    if changes.get("merges", 0) is None:  # merges as "a b" strings, the older tokenizer.json layout
        spec = json.loads((Path(smollm2_ref.location) / "tokenizer.json").read_text())
        changes = {"merges": [" ".join(pair) for pair in spec["model"]["merges"]]}
    directory = bpe_variant(smollm2_ref.location, tmp_path / variant, pre_tokenizer, **changes)
    slow = load_slow_tokenizer(smollm2_fast, directory)  # the variants keep SmolLM2's added and special tokens
    text = TRICKY + load_corpus("enwiki-sample", "evaluation").text[:20_000] + load_corpus("pydoc", "evaluation").text[
        :10_000]
    assert slow.encode(text, False) == reference_ids(directory, text)


def test_nfc_normalizes_the_text(smollm2_ref, smollm2_fast, tmp_path):
    pre_tokenizer, changes = VARIANTS["qwen2"]
    directory = bpe_variant(smollm2_ref.location, tmp_path / "nfc", pre_tokenizer, **changes)
    slow = load_slow_tokenizer(smollm2_fast, directory)
    assert slow.encode("cafe\u0301", False) == slow.encode("caf\u00e9", False)


# --- SentencePiece: a tiny real model trained here ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory) -> Path:
    """A 500-piece BPE SentencePiece model with Llama's settings (byte fallback, no whitespace folding)."""
    import sentencepiece

    root = tmp_path_factory.mktemp("sentencepiece")
    corpus = root / "corpus.txt"
    corpus.write_text(load_corpus("pydoc", "calibration").text[:200_000], encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "tokenizer"), vocab_size=500, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, character_coverage=1.0, minloglevel=2,
    )
    return root / "tokenizer.model"


def sentencepiece_dir(model: Path, target: Path, **config) -> Path:
    target.mkdir()
    shutil.copy(model, target / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, **SP_SPECIALS, **config}
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def legacy_dir(sentencepiece_model, tmp_path_factory) -> Path:
    return sentencepiece_dir(sentencepiece_model, tmp_path_factory.mktemp("sp") / "legacy", legacy=True)


@pytest.fixture(scope="module")
def non_legacy_dir(sentencepiece_model, tmp_path_factory) -> Path:
    return sentencepiece_dir(sentencepiece_model, tmp_path_factory.mktemp("sp") / "non-legacy", legacy=False)


def load(directory: Path) -> SlowTokenizer:
    from transformers import AutoTokenizer

    return load_slow_tokenizer(AutoTokenizer.from_pretrained(directory), directory)


def test_sentencepiece_legacy_encodes_each_piece(legacy_dir):
    import sentencepiece

    model = sentencepiece.SentencePieceProcessor(model_file=str(legacy_dir / "tokenizer.model"))
    slow = load(legacy_dir)
    assert slow.describe() == f"slow: sentencepiece {sentencepiece.__version__} on tokenizer.model (legacy)"
    text = "Hello world<s>foo bar</s> baz<unk>"
    expected = [*model.encode("Hello world"), 1, *model.encode("foo bar"), 2, *model.encode(" baz"), 0]
    assert slow.encode(text, add_special_tokens=False) == expected
    # Each piece gets SentencePiece's dummy prefix: "▁" after a special token, "▁▁" before " baz".
    assert slow.tokenize("<s>x") == ["<s>", *model.encode("x", out_type=str)]
    assert model.encode("x", out_type=str)[0].startswith("▁")
    assert slow.tokenize("</s> baz")[:3] == ["</s>", "▁", "▁b"]
    assert slow.encode("x") == [1, *model.encode("x")]  # BOS where the fast tokenizer puts it
    pydoc = load_corpus("pydoc", "evaluation").text[:50_000]
    assert slow.encode(pydoc, False) == model.encode(pydoc)


def test_sentencepiece_non_legacy_adds_no_prefix_after_special_tokens(legacy_dir, non_legacy_dir):
    """legacy=false: one "▁" in front of the whole text, none in front of text right after a special token."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString((non_legacy_dir / "tokenizer.model").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    bare = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
    with_prefix = sentencepiece.SentencePieceProcessor(model_file=str(non_legacy_dir / "tokenizer.model"))
    slow, legacy = load(non_legacy_dir), load(legacy_dir)
    assert slow.describe().endswith("(legacy=false)")
    assert slow.encode("<s>foo", False) == [1, *bare.encode("foo")]
    assert legacy.encode("<s>foo", False) == [1, *with_prefix.encode("foo")]
    assert slow.encode("Hello world<s>foo", False) == [*with_prefix.encode("Hello world"), 1, *bare.encode("foo")]
    pydoc = load_corpus("pydoc", "evaluation").text[:20_000]
    assert slow.encode(pydoc, False) == legacy.encode(pydoc, False)  # no special tokens: the two rules agree


def test_sentencepiece_against_transformers5_fast(legacy_dir, non_legacy_dir):
    """transformers 5 converts tokenizer.model into a fast BPE with a Metaspace pre-tokenizer that prepends "▁" only
    where the text does not already start with one. It agrees with SentencePiece on corpus text and around special
    tokens, but a text (or a piece after a special token, under legacy) that starts with a space gets "▁▁" from
    SentencePiece, as transformers 4 had it, and a single "▁" from the fast tokenizer."""
    for directory in (legacy_dir, non_legacy_dir):
        slow = load(directory)
        underline = slow.fast.convert_tokens_to_ids("▁")
        for text in ("Hello world<s>foo bar</s>baz", "a  b\n\n c", "x ▁y", load_corpus("pydoc", "evaluation").text[
                :50_000]):
            assert slow.encode(text, False) == fast_ids(slow.fast, text)
        assert slow.encode(" lead", False) == [underline, *fast_ids(slow.fast, " lead")]
    legacy = load(legacy_dir)
    fast = fast_ids(legacy.fast, "a</s> b")
    after = fast.index(2) + 1
    assert legacy.encode("a</s> b", False) == [*fast[:after], underline, *fast[after:]]
    assert load(non_legacy_dir).encode("a</s> b", False) == fast_ids(load(non_legacy_dir).fast, "a</s> b")


# --- errors ---------------------------------------------------------------------------------------------------------


def tiny_bpe(target: Path, pre_tokenizer: dict, normalizer: dict | None = None, **model) -> Path:
    """A tokenizer.json with a two-token vocab: the errors come before the vocab matters."""
    target.mkdir()
    spec = {"normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "added_tokens": [],
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [], **model}}
    (target / "tokenizer.json").write_text(json.dumps(spec))
    return target


@pytest.mark.parametrize(("pre_tokenizer", "normalizer", "model", "message"), [
    ({"type": "Metaspace", "replacement": "▁"}, None, {}, "pre_tokenizer Metaspace is not implemented"),
    ({"type": "Sequence", "pretokenizers": [{"type": "BertPreTokenizer"}, BYTE_LEVEL]}, None, {},
     "pre-tokenizer BertPreTokenizer is not implemented"),
    ({"type": "Sequence", "pretokenizers": [BYTE_LEVEL, {"type": "Digits"}]}, None, {},
     "pre_tokenizer ByteLevel+Digits is not implemented"),
    (split({"Regex": " "}), None, {}, "pre_tokenizer Split is not implemented"),
    (BYTE_LEVEL, {"type": "NFKC"}, {}, "normalizer NFKC is not implemented"),
    (BYTE_LEVEL, None, {"dropout": 0.1}, "BPE dropout 0.1 is not implemented"),
    (BYTE_LEVEL, None, {"byte_fallback": True}, "byte_fallback"),
    (BYTE_LEVEL, None, {"type": "Unigram"}, "model type Unigram"),
])
def test_unsupported_tokenizer_json_is_one_line(pre_tokenizer, normalizer, model, message, smollm2_fast, tmp_path):
    directory = tiny_bpe(tmp_path / "tok", pre_tokenizer, normalizer, **model)
    with pytest.raises(UnsupportedTokenizer) as exc:
        load_slow_tokenizer(smollm2_fast, directory)
    assert message in one_line(exc)


def test_unsupported_sentencepiece_class_is_one_line(sentencepiece_model, smollm2_fast, tmp_path):
    directory = sentencepiece_dir(sentencepiece_model, tmp_path / "t5", tokenizer_class="T5Tokenizer")
    with pytest.raises(UnsupportedTokenizer) as exc:
        load_slow_tokenizer(smollm2_fast, directory)
    assert "tokenizer class T5Tokenizer" in one_line(exc)


def test_missing_tokenizer_files_are_one_line(smollm2_fast, tmp_path):
    with pytest.raises(ModelUnavailable) as exc:
        load_slow_tokenizer(smollm2_fast, tmp_path)
    assert "neither tokenizer.model nor tokenizer.json" in one_line(exc)
    # The tests run with HF_HUB_OFFLINE=1: a hub id not in the cache.
    with pytest.raises(ModelUnavailable) as exc:
        load_slow_tokenizer(smollm2_fast, "prunebench-tests/no-such-model")
    assert "'prunebench-tests/no-such-model' has neither" in one_line(exc) and "HF_HUB_OFFLINE" in str(exc.value)


# --- hub ids --------------------------------------------------------------------------------------------------------

HUB_CHECK = """
from huggingface_hub import constants
from transformers import AutoTokenizer
from harness.slow_tokenizer import load_slow_tokenizer
fast = AutoTokenizer.from_pretrained(REPO_ID)
ids = fast(TEXT, add_special_tokens=False)["input_ids"]
out = []
for offline in (False, True):  # huggingface_hub reads the flag when called: the second load comes from the cache
    constants.HF_HUB_OFFLINE = offline
    slow = load_slow_tokenizer(fast, REPO_ID)
    out.append([slow.describe(), slow.encode(TEXT, add_special_tokens=False) == ids])
print(RESULT + json.dumps(out))
"""


def test_hub_id_online_then_offline(hub_run):  # noqa: F811
    """A hub id through hf_hub_download. The Llama-2 stand-in has SmolLM2's tokenizer.json and no tokenizer.model:
    the hub says so, then the offline cache does not have it, and tokenizer.json is used both times."""
    code = f"import json\nRESULT = {RESULT!r}\nREPO_ID = 'meta-llama/Llama-2-7b-hf'\nTEXT = {TRICKY!r}\n" + HUB_CHECK
    described = "slow: GPT2Tokenizer's rules, byte-level BPE by the tokenizers library on tokenizer.json"
    assert hub_run(code) == [[described, True]] * 2
