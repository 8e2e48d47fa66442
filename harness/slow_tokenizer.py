"""The slow tokenizer of the authors' harness: transformers 4's pure-Python tokenization of corpus text.

The 2SSP authors tokenize their perplexity and calibration text with ``AutoTokenizer.from_pretrained(model,
use_fast=False)`` under transformers 4.47; transformers 5 ignores ``use_fast`` and no longer has the slow
classes. This module computes what those classes computed for plain text with ``add_special_tokens=False``:

1. the text is split on the literal strings of the added and special tokens (leftmost, longest first), each
   becoming its own id; their ``lstrip`` / ``rstrip`` / ``single_word`` flags then edit the neighbouring pieces as
   transformers 4's ``PreTrainedTokenizer.tokenize`` did;
2. every other piece is encoded by the model:

   - SentencePiece (``tokenizer.model``: Llama-2, Mistral, Phi-3, Gemma): ``SentencePieceProcessor.encode(piece)``,
     as ``LlamaTokenizer`` with ``legacy=True`` and ``GemmaTokenizer`` did. SentencePiece adds its dummy prefix
     "▁" to every piece, so the text right after a special token starts with "▁" too. A ``LlamaTokenizer`` config
     with ``"legacy": false`` (Llama-2's own, Phi-3's) changed exactly that: the whole text gets one "▁" in front
     (unless ``add_prefix_space`` is false), the model runs without its dummy prefix, a piece that starts with a
     space is encoded behind the unknown token's text which is then cut off, and a lone leading "▁" before a
     special token is dropped. That rule is implemented here as transformers 4 ran it, so text right after a
     special token gets no "▁" under ``legacy=False``;
   - byte-level BPE (``tokenizer.json``: GPT-2 style, SmolLM2, Qwen2, Llama-3): the file's pre-tokenizer and BPE
     model, run by the tokenizers library, as ``GPT2Tokenizer`` / ``Qwen2Tokenizer`` computed them in Python, but
     for what those classes did otherwise: NFC and the prefix space apply to the whole text, and a byte missing
     from the vocab is the unknown token (the library drops it).

Where transformers 4 itself had no slow class, ``use_fast=False`` gave the fast tokenizer: Llama-3's config names
``PreTrainedTokenizerFast``, so the authors' harness ran the Rust tokenizer there, as this module does, with the
added-token rules above (equal ids on the texts tried, see tests/test_slow_tokenizer.py).

Anything this module does not implement (another pre-tokenizer or normalizer, BPE dropout, another SentencePiece
tokenizer class) is refused in one line that names it, never approximated.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.errors import ModelUnavailable, PrunebenchError

SPIECE_UNDERLINE = "\u2581"
SENTENCEPIECE_FILE = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# transformers 4's SentencePiece classes whose slow tokenization this module reproduces. Only LlamaTokenizer had the
# legacy switch; GemmaTokenizer always encoded each piece as it is.
SENTENCEPIECE_CLASSES = ("LlamaTokenizer", "GemmaTokenizer")


class UnsupportedTokenizer(PrunebenchError):
    """A tokenizer format or option the slow tokenizer does not implement."""


# --- files ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerFiles:
    """The files the slow tokenizer reads; ``sentencepiece`` is preferred when both model files exist."""

    where: str
    sentencepiece: Path | None
    tokenizer_json: Path | None
    config: dict[str, Any]


def find_tokenizer_files(location: str | Path, revision: str | None = None) -> TokenizerFiles:
    """The tokenizer files of a local model directory or a hub id (through the hub cache, offline mode honoured)."""
    directory = Path(location)
    hub = not directory.is_dir()
    if not hub:
        found = {name: directory / name for name in (SENTENCEPIECE_FILE, TOKENIZER_JSON, TOKENIZER_CONFIG)}
        paths = {name: path if path.is_file() else None for name, path in found.items()}
        where = str(directory)
    else:
        where = f"model '{location}'" + (f" at revision '{revision}'" if revision else "")
        paths = {SENTENCEPIECE_FILE: _hub_file(str(location), SENTENCEPIECE_FILE, revision, where)}
        # tokenizer.json is read only without tokenizer.model: one download fewer for SentencePiece models.
        if paths[SENTENCEPIECE_FILE] is None:
            paths[TOKENIZER_JSON] = _hub_file(str(location), TOKENIZER_JSON, revision, where)
        paths[TOKENIZER_CONFIG] = _hub_file(str(location), TOKENIZER_CONFIG, revision, where)
    if paths[SENTENCEPIECE_FILE] is None and paths.get(TOKENIZER_JSON) is None:
        raise ModelUnavailable(f"{where} has neither {SENTENCEPIECE_FILE} nor {TOKENIZER_JSON}"
                               f"{_absent_note() if hub else ''}: the slow tokenizer needs one of them")
    config_path = paths[TOKENIZER_CONFIG]
    config = _read_json(config_path) if config_path is not None else {}
    return TokenizerFiles(where, paths[SENTENCEPIECE_FILE], paths.get(TOKENIZER_JSON), config)


def _hub_file(repo_id: str, filename: str, revision: str | None, where: str) -> Path | None:
    """One file of a hub repository from the cache or the hub; None when the repository (or, offline, the cache)
    has no such file. Any other failure (gated, no such repository or revision, the hub unreachable) is an error."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from harness.hub import describe_failure

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except EntryNotFoundError:  # remote: the repository lacks it; local: offline and not in the cache
        return None
    except Exception as exc:
        raise ModelUnavailable(describe_failure(exc, f"{filename} of {where}")) from exc


def _absent_note() -> str:
    """Where a hub file was looked for: huggingface_hub says "not found" both for a file the repository lacks and,
    when the hub cannot be reached, for one the cache lacks."""
    from harness.hub import offline_mode

    if offline_mode():
        return " in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
    return " on the hub (or in the local cache, if the hub could not be reached)"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot read {path}: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ModelUnavailable(f"{path} is not a JSON object")
    return data


# --- added tokens ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddedToken:
    """An added or special token as transformers 4 split it out of the text."""

    content: str
    id: int
    special: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


def added_tokens(fast: Any, config: Mapping[str, Any]) -> list[AddedToken]:
    """The added tokens: the fast tokenizer's (what transformers 5 read from tokenizer.json / the config), with the
    flags of tokenizer_config.json's ``added_tokens_decoder`` where it lists them (what transformers 4 read)."""
    tokens: dict[int, AddedToken] = {}
    for token_id, token in (getattr(fast, "added_tokens_decoder", None) or {}).items():
        tokens[int(token_id)] = AddedToken(str(token.content), int(token_id), bool(token.special), bool(token.lstrip),
                                           bool(token.rstrip), bool(token.single_word))
    for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, Mapping) and entry.get("content"):
            tokens[int(token_id)] = AddedToken(str(entry["content"]), int(token_id), bool(entry.get("special")),
                                               bool(entry.get("lstrip")), bool(entry.get("rstrip")),
                                               bool(entry.get("single_word")))
    return [token for token in tokens.values() if token.content]


class AddedTokenSplitter:
    """Cuts text at the added tokens' literal strings, as transformers 4's ``PreTrainedTokenizer.tokenize``."""

    def __init__(self, tokens: Iterable[AddedToken]) -> None:
        self.tokens = {token.content: token for token in tokens}
        # An alternation tried longest first finds, at the leftmost position, the longest token
        # ("<extra_id_10>" before "<extra_id_1>"), as transformers 4's trie did.
        contents = sorted(self.tokens, key=len, reverse=True)
        # The capturing group makes re.split keep the tokens between the text pieces.
        self.pattern = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None

    def split(self, text: str) -> list[str]:
        """The text's pieces in order: added tokens' contents and the text between them (no empty pieces)."""
        pieces = self.pattern.split(text) if self.pattern is not None else [text]
        return self._apply_flags([piece for piece in pieces if piece])

    def _apply_flags(self, pieces: list[str]) -> list[str]:
        """lstrip / rstrip remove the whitespace next to a token, single_word glues a token that touches a word to
        that word (then tokenized as text), in transformers 4's order: left to right, neighbours edited in place."""
        for i, piece in enumerate(pieces):
            token = self.tokens.get(piece)
            if token is None:
                continue
            left = pieces[i - 1] if i > 0 else ""
            right = pieces[i + 1] if i + 1 < len(pieces) else ""
            if token.rstrip and right:
                pieces[i + 1] = right.lstrip()
            if token.lstrip and left:
                pieces[i - 1] = left.rstrip()
            if token.single_word and left and left[-1] != " ":
                pieces[i - 1] += piece
                pieces[i] = ""
            elif token.single_word and right and right[0] != " ":
                pieces[i] += right
                pieces[i + 1] = ""
        return [piece for piece in pieces if piece]


# --- the two models -------------------------------------------------------------------------------------------------


class PieceEncoder(Protocol):
    """A model: turns the pieces between added tokens into ids."""

    def prepare(self, text: str) -> str:
        """The whole text before it is split on added tokens (transformers 4's prepare_for_tokenization)."""
        ...

    def encode(self, pieces: Sequence[str], added: Mapping[str, AddedToken]) -> list[int]:
        """Ids of the pieces in order; a piece in ``added`` is that token's id."""
        ...

    def describe(self) -> str: ...


class SentencePieceEncoder:
    """transformers 4's ``LlamaTokenizer`` / ``GemmaTokenizer`` around the SentencePiece library."""

    def __init__(self, path: Path, config: Mapping[str, Any], tokenizer_class: str, unk_token: str | None) -> None:
        import sentencepiece

        if config.get("sp_model_kwargs"):
            raise UnsupportedTokenizer(f"sp_model_kwargs {config['sp_model_kwargs']} in {TOKENIZER_CONFIG}: the slow "
                                       f"tokenizer encodes with SentencePiece's defaults only")
        self.path = path
        self.version = str(getattr(sentencepiece, "__version__", "?"))
        self.model = sentencepiece.SentencePieceProcessor(model_file=str(path))
        # transformers 4: a missing (None) legacy flag meant legacy; only LlamaTokenizer looked at it.
        self.legacy = tokenizer_class != "LlamaTokenizer" or config.get("legacy") is not False
        self.add_prefix_space = bool(config.get("add_prefix_space", True))
        if not self.legacy:
            if not unk_token:
                raise UnsupportedTokenizer(f"legacy=false in {TOKENIZER_CONFIG} without an unk_token: the non-legacy "
                                           f"rule encodes behind the unknown token")
            self.unk_token = unk_token
            self.no_prefix_model = _without_dummy_prefix(path)
            self.unk_length = len(self.no_prefix_model.encode(unk_token))
            self.underline_id = int(self.model.piece_to_id(SPIECE_UNDERLINE))

    def prepare(self, text: str) -> str:
        if self.legacy or not text:
            return text
        # Non-legacy LlamaTokenizer.tokenize: "▁" in the text is a space, and one "▁" goes in front of it all.
        text = text.replace(SPIECE_UNDERLINE, " ")
        return SPIECE_UNDERLINE + text if self.add_prefix_space else text

    def encode(self, pieces: Sequence[str], added: Mapping[str, AddedToken]) -> list[int]:
        chunks = [[added[piece].id] if piece in added else self._encode_piece(piece) for piece in pieces]
        # Non-legacy: text that starts with a special token keeps no lone "▁" in front of it.
        if (not self.legacy and len(chunks) > 1 and chunks[0] == [self.underline_id] and pieces[0] not in added
                and pieces[1] in added and added[pieces[1]].special):
            chunks = chunks[1:]
        return [token_id for chunk in chunks for token_id in chunk]

    def _encode_piece(self, piece: str) -> list[int]:
        if self.legacy:
            return list(self.model.encode(piece))
        if not piece.startswith((SPIECE_UNDERLINE, " ")):
            return list(self.no_prefix_model.encode(piece))
        # Without the dummy prefix SentencePiece would drop a leading "▁": encode behind "<unk>", cut it off.
        ids = list(self.no_prefix_model.encode(self.unk_token + piece))
        return ids[self.unk_length :] if len(ids) >= self.unk_length else ids

    def describe(self) -> str:
        rule = "legacy" if self.legacy else "legacy=false"
        return f"slow: sentencepiece {self.version} on {SENTENCEPIECE_FILE} ({rule})"


def _without_dummy_prefix(path: Path) -> Any:
    """The same SentencePiece model with add_dummy_prefix off, as non-legacy transformers 4 loaded it."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto.FromString(path.read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    return sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-to-character table: printable Latin-1 bytes stand for themselves, the other 68 bytes take the
    characters from U+0100 on, in byte order, so every byte is a visible, non-whitespace character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


class ByteLevelBPE:
    """GPT-2-style byte-level BPE from a ``tokenizer.json`` (what GPT2Tokenizer / Qwen2Tokenizer did).

    The file's own pre-tokenizer and BPE model run in the tokenizers library; prunebench adds only what transformers
    4's Python classes did differently from it: NFC and the prefix space apply to the whole text before the added
    tokens are split off (``prepare``), and a byte missing from the vocab is the unknown token, where the library
    drops it (``_with_unknown``).
    """

    def __init__(self, spec: Mapping[str, Any], path: Path, unk_id: int | None = None) -> None:
        from tokenizers import Tokenizer

        self.path = path
        self.unk_id = unk_id
        model = spec.get("model") or {}
        _check_bpe_model(model, path)
        self.nfc = _normalizer_is_nfc(spec.get("normalizer"), path)
        pre_tokenizer, self.prefix_space = _pre_tokenizer(spec.get("pre_tokenizer"), path)
        # The library sees words only: no normalizer and no prefix space per piece (both applied to the whole text),
        # no added tokens (split off before, by transformers 4's rules), no template around the ids.
        bare = {**spec, "normalizer": None, "pre_tokenizer": pre_tokenizer, "added_tokens": [], "post_processor": None,
                "decoder": None, "truncation": None, "padding": None}
        self.library = Tokenizer.from_str(json.dumps(bare))
        vocab = model["vocab"]
        missing = {byte: char for byte, char in bytes_to_unicode().items() if char not in vocab}
        self.missing_bytes = bytes(missing)
        self.missing_chars = re.compile(f"([{re.escape(''.join(missing.values()))}])") if missing else None
        # A word holding an unknown byte is never a token, so ignore_merges (Llama-3: a word that is a token is not
        # merged) does not apply to it: its parts between unknown bytes are merged as they are, with all merges.
        self.parts = self.library.model
        if missing and model.get("ignore_merges"):
            self.parts = Tokenizer.from_str(json.dumps({**bare, "model": {**model, "ignore_merges": False}})).model

    def prepare(self, text: str) -> str:
        # Qwen2Tokenizer normalized the whole text before splitting off added tokens; GPT2Tokenizer's
        # add_prefix_space put one space in front of the whole text.
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        return " " + text if self.prefix_space else text

    def encode(self, pieces: Sequence[str], added: Mapping[str, AddedToken]) -> list[int]:
        ids: list[int] = []
        for piece in pieces:
            if piece in added:
                ids.append(added[piece].id)
            elif self.missing_bytes and self._has_missing_byte(piece):
                ids.extend(self._with_unknown(piece))
            else:
                ids.extend(self.library.encode(piece, add_special_tokens=False).ids)
        return ids

    def _has_missing_byte(self, piece: str) -> bool:
        raw = piece.encode("utf-8")
        return len(raw.translate(None, self.missing_bytes)) < len(raw)

    def _with_unknown(self, piece: str) -> list[int]:
        """A piece holding a byte the vocab lacks (SmolLM2 lacks those of some control characters): the byte is
        the unknown token, as GPT2Tokenizer gave it, and the symbols on either side of it merge apart, as no merge
        joins a symbol outside the vocab."""
        assert self.missing_chars is not None
        ids: list[int] = []
        for word, _ in self.library.pre_tokenizer.pre_tokenize_str(piece):
            for part in filter(None, self.missing_chars.split(word)):
                if self.missing_chars.fullmatch(part):
                    if self.unk_id is None:
                        raise UnsupportedTokenizer(f"BPE produced {part!r}, which is not in the vocab of {self.path}, "
                                                   f"and the tokenizer has no unknown token")
                    ids.append(self.unk_id)
                else:
                    ids.extend(token.id for token in self.parts.tokenize(part))
        return ids

    def describe(self) -> str:
        return f"slow: GPT2Tokenizer's rules, byte-level BPE by the tokenizers library on {TOKENIZER_JSON}"


def _check_bpe_model(model: Mapping[str, Any], path: Path) -> None:
    kind = model.get("type")
    if kind != "BPE":
        raise UnsupportedTokenizer(f"{path}: model type {kind}: the slow tokenizer implements byte-level BPE only")
    if "vocab" not in model or not isinstance(model["vocab"], Mapping):
        raise UnsupportedTokenizer(f"{path}: the BPE model has no vocab")
    if model.get("dropout") not in (None, 0, 0.0):
        raise UnsupportedTokenizer(f"{path}: BPE dropout {model['dropout']} is not implemented (it is random)")
    for option in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise UnsupportedTokenizer(f"{path}: BPE {option} {model[option]!r} is not implemented")
    if model.get("byte_fallback"):
        raise UnsupportedTokenizer(f"{path}: BPE byte_fallback (a SentencePiece-style model) is not implemented; "
                                   f"the slow tokenizer needs its {SENTENCEPIECE_FILE}")


def _normalizer_is_nfc(spec: Mapping[str, Any] | None, path: Path) -> bool:
    """None or NFC (also inside a Sequence); any other normalizer is refused."""
    if spec is None:
        return False
    kind = spec.get("type")
    if kind == "NFC":
        return True
    if kind == "Sequence":
        return any([_normalizer_is_nfc(inner, path) for inner in spec.get("normalizers") or []])
    raise UnsupportedTokenizer(f"{path}: normalizer {kind} is not implemented (only none or NFC)")


def _pre_tokenizer(spec: Mapping[str, Any] | None, path: Path) -> tuple[dict[str, Any], bool]:
    """The pre-tokenizer the library runs on each piece (without the prefix space), and whether a space goes in
    front of the whole text.

    Byte-level BPE needs a ByteLevel step, and it must be the last one: the byte mapping is done per word after
    splitting (with Split or Digits before it on the original text, as Qwen2 and Llama-3 do). Those are the
    pre-tokenizers transformers 4's slow classes had (their own regexes); any other is refused.
    """
    if spec is None:
        raise UnsupportedTokenizer(f"{path}: no pre_tokenizer, so not a byte-level BPE tokenizer")
    steps = list(spec.get("pretokenizers") or []) if spec.get("type") == "Sequence" else [spec]
    kinds = [step.get("type") for step in steps]
    if not kinds or kinds[-1] != "ByteLevel" or kinds.count("ByteLevel") != 1:
        raise UnsupportedTokenizer(f"{path}: pre_tokenizer {'+'.join(map(str, kinds)) or 'empty'} is not implemented "
                                   f"(the slow tokenizer needs byte-level BPE: Split / Digits steps, then ByteLevel)")
    for kind in kinds[:-1]:
        if kind not in ("Split", "Digits"):
            raise UnsupportedTokenizer(f"{path}: pre-tokenizer {kind} is not implemented (only Split, Digits, "
                                       f"ByteLevel)")
    byte_level = {**steps[-1], "add_prefix_space": False}
    words = {"type": "Sequence", "pretokenizers": [*steps[:-1], byte_level]} if len(steps) > 1 else byte_level
    return words, bool(steps[-1].get("add_prefix_space", False))


# --- the tokenizer --------------------------------------------------------------------------------------------------


class SlowTokenizer:
    """A drop-in for the fast tokenizer where prunebench tokenizes corpus text (harness.data.tokens.tokenize).

    ``fast`` is the transformers 5 tokenizer it wraps: lm-eval, generation and checkpoints keep using it, and
    decoding goes through it.
    """

    is_fast = False

    def __init__(self, fast: Any, encoder: PieceEncoder, tokens: Iterable[AddedToken]) -> None:
        self.fast = fast
        self.encoder = encoder
        self.splitter = AddedTokenSplitter(tokens)
        self.bos_token_id: int | None = getattr(fast, "bos_token_id", None)
        self.eos_token_id: int | None = getattr(fast, "eos_token_id", None)
        self.special_template = _special_template(fast)

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True,
                 return_attention_mask: bool | None = None, return_token_type_ids: bool | None = None,
                 verbose: bool = True, **options: Any) -> Any:
        """``{"input_ids": [...]}`` (a list of lists for a list of texts), with an attention mask unless
        ``return_attention_mask=False``; other options of transformers' ``__call__`` are refused."""
        from transformers import BatchEncoding

        del verbose  # transformers' switch for its max-length warning: this tokenizer has none to silence
        if options:
            raise PrunebenchError(f"the slow tokenizer does not take {', '.join(sorted(options))}")
        if isinstance(text, str):
            ids: Any = self.encode(text, add_special_tokens)
            ones, zeros = [1] * len(ids), [0] * len(ids)
        else:
            ids = [self.encode(item, add_special_tokens) for item in text]
            ones, zeros = [[1] * len(row) for row in ids], [[0] * len(row) for row in ids]
        data: dict[str, Any] = {"input_ids": ids}
        if return_attention_mask is not False:
            data["attention_mask"] = ones
        if return_token_type_ids:
            data["token_type_ids"] = zeros
        return BatchEncoding(data)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of ``text``; with special tokens, those the fast tokenizer puts around a text (BOS for Llama)."""
        if not isinstance(text, str):
            raise PrunebenchError(f"the slow tokenizer encodes text, got {type(text).__name__}")
        pieces = self.splitter.split(self.encoder.prepare(text))
        ids = self.encoder.encode(pieces, self.splitter.tokens)
        if not add_special_tokens:
            return ids
        if self.special_template is None:
            raise PrunebenchError("add_special_tokens=True: the fast tokenizer's special tokens do not surround "
                                  "the text, so the slow tokenizer cannot add them; tokenize without them")
        prefix, suffix = self.special_template
        return [*prefix, *ids, *suffix]

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` as strings (for inspection: the fast tokenizer's vocabulary names the ids)."""
        return [str(token) for token in self.fast.convert_ids_to_tokens(self.encode(text, False))]

    def decode(self, ids: Sequence[int], **options: Any) -> str:
        return str(self.fast.decode(list(ids), **options))

    def describe(self) -> str:
        """How corpus text is tokenized, for result protocols."""
        return self.encoder.describe()

    def __repr__(self) -> str:
        return f"SlowTokenizer({self.describe()})"


def _special_template(fast: Any) -> tuple[list[int], list[int]] | None:
    """The ids the fast tokenizer puts before and after a text when it adds special tokens; None when its plain
    ids are not a contiguous part of them (a template the slow tokenizer cannot reproduce)."""
    plain = list(fast("x", add_special_tokens=False)["input_ids"])
    full = list(fast("x", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return None


def load_slow_tokenizer(fast: Any, location: str | Path, revision: str | None = None) -> SlowTokenizer:
    """The slow tokenizer of the model at ``location`` (a directory or a hub id at ``revision``).

    ``fast`` is the transformers tokenizer already loaded for that model: its added tokens, BOS/EOS and unknown
    token are used, and it stays available as ``.fast``. tokenizer.model (SentencePiece) is preferred over
    tokenizer.json (byte-level BPE). Raises ModelUnavailable when neither file is there, UnsupportedTokenizer for
    a format this module does not implement.
    """
    files = find_tokenizer_files(location, revision)
    tokens = added_tokens(fast, files.config)
    encoder: PieceEncoder
    if files.sentencepiece is not None:
        tokenizer_class = _tokenizer_class(fast, files.config)
        if tokenizer_class not in SENTENCEPIECE_CLASSES:
            raise UnsupportedTokenizer(f"{files.where}: tokenizer class {tokenizer_class} with {SENTENCEPIECE_FILE}: "
                                       f"the slow tokenizer implements {' and '.join(SENTENCEPIECE_CLASSES)}")
        encoder = SentencePieceEncoder(files.sentencepiece, files.config, tokenizer_class, _unk_token(fast))
    else:
        assert files.tokenizer_json is not None
        encoder = ByteLevelBPE(_read_json(files.tokenizer_json), files.tokenizer_json,
                               getattr(fast, "unk_token_id", None))
    return SlowTokenizer(fast, encoder, tokens)


def _tokenizer_class(fast: Any, config: Mapping[str, Any]) -> str:
    """transformers 4's class for the model: the config's tokenizer_class (its slow form), else the class
    transformers 5 chose (which keeps the model family's name, e.g. LlamaTokenizer)."""
    name = str(config.get("tokenizer_class") or type(fast).__name__)
    return name.removesuffix("Fast")


def _unk_token(fast: Any) -> str | None:
    unk = getattr(fast, "unk_token", None)
    return str(unk) if unk else None
