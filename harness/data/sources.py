"""The registry of text sources: hub datasets as in the paper, offline text, and the user's own files.

Every source gives a ``Corpus``: its documents joined with "\\n\\n" plus a protocol that says exactly
which text that is, so a perplexity is never reported without the data it was measured on.

- ``wikitext2``, ``c4``, ``fineweb-edu``: the paper's hub datasets at pinned revisions (docs/protocol.md,
  "Perplexity"); fetched documents are cached under ``cache_dir()/data`` and then need no hub.
- ``enwiki-sample``, ``pydoc``: offline text (harness.data.offline), disjoint 30 % / 70 % parts.
- ``text:PATH`` (documents = blank-line-separated paragraphs), ``jsonl:PATH`` (a ``text`` field per
  line): the user's own file, the same text for either role.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from harness.data import offline
from harness.errors import DataUnavailable, PrunebenchError, UnknownName
from harness.files import write_text_atomic
from harness.hub import HUB_TIMEOUT_S, describe_failure, hub_endpoint, hub_reachable, one_line
from harness.paths import cache_dir

log = logging.getLogger(__name__)

Role = Literal["evaluation", "calibration"]
ROLES: tuple[Role, ...] = ("evaluation", "calibration")
JOIN = "\n\n"

WIKITEXT2_DATASET = "Salesforce/wikitext"
WIKITEXT2_CONFIG = "wikitext-2-raw-v1"
WIKITEXT2_REVISION = "b08601e04326c79dfdd32d625aee71d232d685c3"

C4_DATASET = "allenai/c4"
C4_REVISION = "1588ec454efa1a09f29cd18ddd04fe05fc8653a2"
C4_VALIDATION_FILE = "en/c4-validation.00000-of-00008.json.gz"
C4_TRAIN_FILE = "en/c4-train.00000-of-01024.json.gz"
C4_EVALUATION_DOCUMENTS = 1100
C4_CALIBRATION_DOCUMENTS = 1000

FINEWEB_EDU_DATASET = "HuggingFaceFW/fineweb-edu"
FINEWEB_EDU_REVISION = "87f09149ef4734204d70ed1d046ddc9ca3f2b8f9"
FINEWEB_EDU_FILE = "sample/10BT/000_00000.parquet"
FINEWEB_EDU_EVALUATION_DOCUMENTS = 500
FINEWEB_EDU_CALIBRATION_DOCUMENTS = 1000

HUB_CACHE_VERSION = 1

TEXT_PREFIX = "text:"
JSONL_PREFIX = "jsonl:"
OFFLINE_SOURCES = ("enwiki-sample", "pydoc", "text:PATH", "jsonl:PATH")


@dataclass(frozen=True)
class Corpus:
    """The text of one source in one role, and what reproduces it.

    ``text`` is the ``documents`` joined with "\\n\\n"; the documents themselves are kept for the calibration
    constructions that work per document (harness.data.tokens).
    """

    source: str
    role: Role
    text: str
    protocol: dict[str, Any]
    documents: tuple[str, ...] = ()


@dataclass(frozen=True)
class HubPart:
    """Rows [start, stop) of one split (or one data file) of a hub dataset; stop None = all rows."""

    split: str
    data_file: str | None = None
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class HubSource:
    """A pinned hub dataset. ``streaming`` reads only the needed prefix of a large data file
    (FineWeb-Edu's parquet is 2 GB for 1500 documents); the rows are the same either way."""

    dataset: str
    config: str | None
    revision: str
    evaluation: HubPart
    calibration: HubPart
    streaming: bool = False

    def part(self, role: Role) -> HubPart:
        return self.evaluation if role == "evaluation" else self.calibration


@dataclass(frozen=True)
class OfflineSource:
    """Text shipped with the installed packages, split into disjoint parts by document."""

    load: Callable[[offline.Part], tuple[list[str], dict[str, Any]]]


_REGISTRY: Mapping[str, HubSource | OfflineSource] = MappingProxyType(
    {
        "wikitext2": HubSource(
            WIKITEXT2_DATASET,
            WIKITEXT2_CONFIG,
            WIKITEXT2_REVISION,
            evaluation=HubPart("test"),
            calibration=HubPart("train"),
        ),
        "c4": HubSource(
            C4_DATASET,
            None,
            C4_REVISION,
            evaluation=HubPart("validation", C4_VALIDATION_FILE, 0, C4_EVALUATION_DOCUMENTS),
            calibration=HubPart("train", C4_TRAIN_FILE, 0, C4_CALIBRATION_DOCUMENTS),
            streaming=True,
        ),
        "fineweb-edu": HubSource(
            FINEWEB_EDU_DATASET,
            None,
            FINEWEB_EDU_REVISION,
            evaluation=HubPart("train", FINEWEB_EDU_FILE, 0, FINEWEB_EDU_EVALUATION_DOCUMENTS),
            calibration=HubPart(
                "train",
                FINEWEB_EDU_FILE,
                FINEWEB_EDU_EVALUATION_DOCUMENTS,
                FINEWEB_EDU_EVALUATION_DOCUMENTS + FINEWEB_EDU_CALIBRATION_DOCUMENTS,
            ),
            streaming=True,
        ),
        "enwiki-sample": OfflineSource(offline.load_enwiki),
        "pydoc": OfflineSource(offline.load_pydoc),
    }
)


# --- registry ------------------------------------------------------------------------------------


def source_names() -> list[str]:
    """Registered names, then the two file patterns."""
    return [*_REGISTRY, "text:PATH", "jsonl:PATH"]


def hub_source(name: str) -> HubSource | None:
    """The hub definition behind ``name`` (None for offline and file sources)."""
    source = _REGISTRY.get(name)
    return source if isinstance(source, HubSource) else None


def _unknown(spec: str) -> UnknownName:
    close = difflib.get_close_matches(spec, list(_REGISTRY), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UnknownName(f"unknown data source {spec!r}{hint}; valid sources: {', '.join(source_names())}")


def _file_spec(spec: str) -> tuple[str, Path] | None:
    """("text" | "jsonl", path) for a file spec, None for anything else."""
    for prefix in (TEXT_PREFIX, JSONL_PREFIX):
        if spec.startswith(prefix):
            raw = spec[len(prefix) :]
            if not raw:
                raise UnknownName(f"data source {spec!r} needs a file path: {prefix}PATH")
            return prefix[:-1], Path(raw).expanduser()
    return None


def _check_readable(spec: str, path: Path) -> None:
    if not path.exists():
        raise DataUnavailable(f"data source {spec!r}: no such file {path}")
    if not path.is_file():
        raise DataUnavailable(f"data source {spec!r}: {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise DataUnavailable(f"data source {spec!r}: {path} is not readable")


def validate_source(spec: str) -> None:
    """Reject an unknown name or an unreadable file before anything heavy runs (no hub access)."""
    parsed = _file_spec(spec)
    if parsed is not None:
        _check_readable(spec, parsed[1])
    elif spec not in _REGISTRY:
        raise _unknown(spec)


def _check_role(role: str) -> Role:
    if role not in ROLES:
        raise PrunebenchError(f"data role must be one of {', '.join(ROLES)}, not {role!r}")
    return role  # type: ignore[return-value]


def load_corpus(spec: str, role: Role) -> Corpus:
    """The text of ``spec`` for ``role`` (see the module docstring for what each source gives)."""
    role = _check_role(role)
    validate_source(spec)
    parsed = _file_spec(spec)
    if parsed is not None:
        kind, path = parsed
        docs, protocol = (_read_text_file if kind == "text" else _read_jsonl_file)(spec, path)
    else:
        source = _REGISTRY[spec]
        if isinstance(source, HubSource):
            docs, protocol = _hub_documents(spec, source, role)
        else:
            docs, protocol = source.load(role)
    return _corpus(spec, role, docs, protocol)


def _corpus(spec: str, role: Role, docs: list[str], protocol: dict[str, Any]) -> Corpus:
    text = JOIN.join(docs)
    if not text.strip():
        raise DataUnavailable(f"data source {spec!r} ({role}) holds no text")
    full = {
        "source": spec,
        "role": role,
        **protocol,
        "documents": len(docs),
        "join": JOIN,
        "characters": len(text),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    return Corpus(source=spec, role=role, text=text, protocol=full, documents=tuple(docs))


# --- files of the user ----------------------------------------------------------------------------


def _read_file(spec: str, path: Path) -> tuple[str, dict[str, Any]]:
    """Decoded text (newlines normalised) and the file part of the protocol."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataUnavailable(f"data source {spec!r}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataUnavailable(
            f"data source {spec!r}: {path} is not UTF-8 (bad byte at offset {exc.start})"
        ) from exc
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, {"path": str(path.resolve()), "sha256": hashlib.sha256(raw).hexdigest()}


_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


def _read_text_file(spec: str, path: Path) -> tuple[list[str], dict[str, Any]]:
    """Documents = paragraphs separated by blank lines; the same text serves either role."""
    text, protocol = _read_file(spec, path)
    docs = [d.strip("\n") for d in _BLANK_LINES.split(text) if d.strip()]
    return docs, {"kind": "text", **protocol, "documents_from": "split on blank lines"}


def _read_jsonl_file(spec: str, path: Path) -> tuple[list[str], dict[str, Any]]:
    """One JSON object per line with a string ``text``; blank lines are skipped."""
    text, protocol = _read_file(spec, path)
    docs: list[str] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataUnavailable(
                f"data source {spec!r}: line {lineno} is not valid JSON ({exc.msg})"
            ) from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataUnavailable(
                f"data source {spec!r}: line {lineno} is not an object with a string 'text' field"
            )
        docs.append(obj["text"])
    return docs, {"kind": "jsonl", **protocol, "field": "text"}


# --- hub -----------------------------------------------------------------------------------------


def _hub_offline_mode() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as the datasets library itself read them."""
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def _unreachable(spec: str, source: HubSource, part: HubPart, why: str) -> DataUnavailable:
    return DataUnavailable(
        f"data source {spec!r}: {source.dataset}@{source.revision[:12]} {part.data_file or part.split} is not in "
        f"prunebench's data cache ({cache_dir() / 'data'}) and the Hugging Face hub is unreachable ({why}); "
        f"offline sources: {', '.join(OFFLINE_SOURCES)} (profile cpu-quick uses them)"
    )


def _hub_protocol(source: HubSource, part: HubPart) -> dict[str, Any]:
    return {
        "kind": "hub",
        "loader": "datasets.load_dataset",
        "dataset": source.dataset,
        "config": source.config,
        "revision": source.revision,
        "split": part.split,
        "data_file": part.data_file,
        "rows": [part.start, part.stop],
        "field": "text",
    }


def _hub_cache_file(protocol: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", protocol["dataset"]).strip("-").lower()
    return cache_dir() / "data" / f"hub-v{HUB_CACHE_VERSION}-{slug}-{key}.json"


def _read_cached_documents(path: Path, protocol: dict[str, Any]) -> list[str] | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload["protocol"] != protocol:
            return None
        return [str(doc) for doc in payload["documents"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable data cache %s (%s)", path, exc)
        return None


def _hub_documents(spec: str, source: HubSource, role: Role) -> tuple[list[str], dict[str, Any]]:
    """The documents of one part, from prunebench's cache when an earlier run fetched them (which also
    makes them available offline afterwards), else from the hub."""
    part = source.part(role)
    protocol = _hub_protocol(source, part)
    cache = _hub_cache_file(protocol)
    docs = _read_cached_documents(cache, protocol)
    if docs is None:
        docs = _fetch_hub_documents(spec, source, part)
        write_text_atomic(cache, json.dumps({"protocol": protocol, "documents": docs}, ensure_ascii=False))
        log.info("%s (%s): %d documents fetched from %s@%s, kept in %s", spec, role, len(docs), source.dataset,
                 source.revision[:12], cache)
    else:
        log.info("%s (%s): %d documents from prunebench's data cache %s", spec, role, len(docs), cache)
    return docs, protocol


def _fetch_hub_documents(spec: str, source: HubSource, part: HubPart) -> list[str]:
    """Rows [start, stop) of the part's ``text`` field via datasets.load_dataset at the pinned revision."""
    import datasets

    offline_mode = _hub_offline_mode()
    if not offline_mode and not hub_reachable():
        raise _unreachable(spec, source, part, f"no answer from {hub_endpoint()} within {HUB_TIMEOUT_S:g} s")
    kwargs: dict[str, Any] = {"revision": source.revision, "split": part.split}
    if source.config is not None:
        kwargs["name"] = source.config
    if part.data_file is not None:
        kwargs["data_files"] = {part.split: part.data_file}
    # Streaming needs the network; offline, only a previously downloaded datasets cache can help.
    streaming = source.streaming and not offline_mode
    try:
        rows = datasets.load_dataset(source.dataset, streaming=streaming, **kwargs)
        docs = [str(row["text"] or "") for row in itertools.islice(rows, part.start, part.stop)]
    except Exception as exc:
        if offline_mode:
            why = f"offline mode is set and the local datasets cache lacks it: {one_line(exc)}"
            raise _unreachable(spec, source, part, why) from exc
        raise DataUnavailable(describe_failure(
            exc, f"data source {spec!r}: {source.dataset}@{source.revision[:12]} ({part.data_file or part.split})"
        )) from exc
    if part.stop is not None and len(docs) != part.stop - part.start:
        raise DataUnavailable(
            f"data source {spec!r}: {source.dataset} {part.data_file or part.split} has only "
            f"{part.start + len(docs)} rows, {part.stop} are needed"
        )
    return docs
