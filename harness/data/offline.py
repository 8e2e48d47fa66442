"""Text that needs no network: the Wikipedia extract inside the gensim wheel and Python's pydoc topics.

Both are split BY DOCUMENT into disjoint evaluation and calibration parts, interleaved by document
index so that both parts sample the whole collection (the extract is ordered by page id, so a
contiguous split would put different subjects in each part).
"""

from __future__ import annotations

import bz2
import importlib.metadata
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from harness.errors import DataUnavailable, PrunebenchError
from harness.files import sha256_file, write_text_atomic
from harness.paths import cache_dir

log = logging.getLogger(__name__)

Part = Literal["calibration", "evaluation"]

ENWIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Bump whenever the cleaning below changes: the cache file name carries it, so old extractions are ignored.
ENWIKI_EXTRACTION_VERSION = 1

# Document i (0-based, in collection order) goes to evaluation when i % 10 is one of these: 30 %.
EVALUATION_RESIDUES: tuple[int, ...] = (2, 5, 8)
SPLIT_MODULUS = 10
SPLIT_RULE = (
    f"document index i (0-based, in order) goes to evaluation if i % {SPLIT_MODULUS} in "
    f"{list(EVALUATION_RESIDUES)}, otherwise to calibration"
)

# Sections that hold citations and link lists rather than prose.
_REFERENCE_SECTIONS = frozenset(
    {
        "references",
        "notes",
        "footnotes",
        "citations",
        "sources",
        "bibliography",
        "further reading",
        "external links",
        "see also",
        "notes and references",
        "references and notes",
        "works cited",
        "primary sources",
        "secondary sources",
    }
)
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*=+$")
# List items, indented lines, definition lists and table residue start with one of these.
_LIST_OR_TABLE = tuple("*#:;|!{}")
_GALLERY = re.compile(r"^(File|Image)\s*:", re.IGNORECASE)
# A prose line ends like a sentence; captions and table cells do not.
_SENTENCE_END = re.compile(r"[.!?:;][\"')\]”’]*$")
_MIN_WORDS = 5
_SPACES = re.compile(r"[ \t\u00a0]+")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;])")


def split_part(items: Sequence[Any], part: Part) -> list[Any]:
    """The evaluation or calibration share of ``items`` under SPLIT_RULE (disjoint, ~30/70)."""
    if part not in ("calibration", "evaluation"):
        raise PrunebenchError(f"part must be 'calibration' or 'evaluation', not {part!r}")
    want_eval = part == "evaluation"
    return [x for i, x in enumerate(items) if (i % SPLIT_MODULUS in EVALUATION_RESIDUES) == want_eval]


# --- enwiki-sample -----------------------------------------------------------------------------


def gensim_version() -> str:
    """gensim's version without importing it (the import pulls scipy and takes seconds)."""
    return importlib.metadata.version("gensim")


def enwiki_path() -> Path:
    """The bz2 extract shipped in the gensim wheel."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable("enwiki-sample needs the gensim package, which is not installed")
    path = Path(spec.submodule_search_locations[0]) / "test" / "test_data" / ENWIKI_FILE
    if not path.is_file():
        raise DataUnavailable(
            f"enwiki-sample: {path} is missing from the installed gensim {gensim_version()}"
        )
    return path


def _clean_line(line: str) -> str:
    """Drop bold/italic quotes and the debris that removed templates leave behind."""
    line = line.replace("'''", "").replace("''", "")
    line = _EMPTY_PARENS.sub("", line)
    line = _SPACES.sub(" ", line)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", line).strip()


def _is_prose(line: str) -> bool:
    """Keep sentences; drop list/table/gallery lines, captions and cell fragments."""
    if not line or line.startswith(_LIST_OR_TABLE) or _GALLERY.match(line):
        return False
    return len(line.split()) >= _MIN_WORDS and _SENTENCE_END.search(line) is not None


def clean_article(plain: str) -> str:
    """Prose of one article (``filter_wiki`` output): headings kept only when prose follows them,
    reference/link sections dropped with their subsections, one paragraph per line."""
    items: list[tuple[bool, str]] = []  # (is_heading, text)
    skip_below: int | None = None  # level of the reference section being skipped
    for raw in plain.split("\n"):
        stripped = raw.strip()
        heading = _HEADING.match(stripped)
        if heading:
            level, title = len(heading.group(1)), _clean_line(heading.group(2))
            if skip_below is not None and level > skip_below:
                continue
            skip_below = level if title.lower() in _REFERENCE_SECTIONS else None
            if skip_below is None and title:
                items.append((True, title))
            continue
        if skip_below is not None or stripped.startswith(_LIST_OR_TABLE):
            continue
        line = _clean_line(stripped)
        if _is_prose(line):
            items.append((False, line))
    kept = [
        text
        for i, (is_heading, text) in enumerate(items)
        if not is_heading or (i + 1 < len(items) and not items[i + 1][0])
    ]
    return "\n".join(kept)


def _is_redirect(wikitext: str) -> bool:
    return wikitext.lstrip().upper().startswith("#REDIRECT")


def extract_enwiki(path: Path) -> list[tuple[str, str]]:
    """All articles of the extract as (title, cleaned text), in file order; redirects and articles
    with no prose left are dropped. Takes a couple of seconds: callers go through the cache."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles: list[tuple[str, str]] = []
    with bz2.open(path, "rb") as fh:
        for title, wikitext, _page_id in extract_pages(fh):
            if not wikitext or _is_redirect(wikitext):
                continue
            text = clean_article(filter_wiki(wikitext))
            if text:
                articles.append((title, text))
    return articles


def enwiki_cache_file(sha256: str) -> Path:
    """Named by extraction version and source hash, so a new cleaning or a new file is a cache miss."""
    return cache_dir() / "data" / f"enwiki-sample-x{ENWIKI_EXTRACTION_VERSION}-{sha256[:16]}.json"


def _read_cached_articles(path: Path, sha256: str) -> list[tuple[str, str]] | None:
    """The cached articles, or None when the cache is absent, unreadable or for another file/version."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload["extraction_version"] != ENWIKI_EXTRACTION_VERSION or payload["sha256"] != sha256:
            return None
        return [(str(title), str(text)) for title, text in payload["articles"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable enwiki cache %s (%s); extracting again", path, exc)
        return None


def all_enwiki_articles() -> list[tuple[str, str]]:
    """Every cleaned article, from the cache when it is there, else extracted and cached."""
    path = enwiki_path()
    sha = sha256_file(path)
    cache = enwiki_cache_file(sha)
    articles = _read_cached_articles(cache, sha)
    if articles is None:
        log.info("extracting %s (cached afterwards in %s)", path.name, cache)
        articles = extract_enwiki(path)
        record = {"extraction_version": ENWIKI_EXTRACTION_VERSION, "sha256": sha, "gensim_version": gensim_version(),
                  "articles": articles}
        write_text_atomic(cache, json.dumps(record, ensure_ascii=False))
    return articles


def enwiki_articles(part: Part) -> list[tuple[str, str]]:
    """(title, cleaned text) of the articles of one part, in file order. Evaluation and calibration
    never share an article, so a model calibrated on one part is evaluated on unseen text."""
    return split_part(all_enwiki_articles(), part)


def enwiki_protocol(part: Part, n_articles: int) -> dict[str, Any]:
    """What reproduces the enwiki-sample text of ``part`` exactly."""
    path = enwiki_path()
    return {
        "kind": "enwiki-sample",
        "file": f"gensim/test/test_data/{ENWIKI_FILE}",
        "gensim_version": gensim_version(),
        "sha256": sha256_file(path),
        "extraction_version": ENWIKI_EXTRACTION_VERSION,
        "extraction": (
            "gensim extract_pages + filter_wiki; redirects, reference/link sections, list/table/gallery "
            "lines and non-sentence lines (< 5 words or no final punctuation) dropped; one paragraph per line"
        ),
        "part": part,
        "split": SPLIT_RULE,
        "articles": n_articles,
    }


# --- pydoc -------------------------------------------------------------------------------------


def pydoc_topics(part: Part) -> list[tuple[str, str]]:
    """(topic key, text) of Python's pydoc topics, sorted by key, for one part."""
    from pydoc_data.topics import topics

    items = [(key, topics[key].strip()) for key in sorted(topics)]
    return split_part([(k, t) for k, t in items if t], part)


def pydoc_protocol(part: Part, n_topics: int) -> dict[str, Any]:
    """pydoc topics change with the Python release: record it."""
    return {
        "kind": "pydoc",
        "module": "pydoc_data.topics.topics",
        "python_version": sys.version.split()[0],
        "order": "sorted by topic key, each topic stripped",
        "part": part,
        "split": SPLIT_RULE,
        "topics": n_topics,
    }


def documents_of(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """The texts of (name, text) pairs."""
    return [text for _name, text in pairs]


def load_enwiki(part: Part) -> tuple[list[str], dict[str, Any]]:
    """Documents and protocol of one enwiki-sample part."""
    docs = documents_of(enwiki_articles(part))
    return docs, enwiki_protocol(part, len(docs))


def load_pydoc(part: Part) -> tuple[list[str], dict[str, Any]]:
    """Documents and protocol of one pydoc part."""
    docs = documents_of(pydoc_topics(part))
    return docs, pydoc_protocol(part, len(docs))
