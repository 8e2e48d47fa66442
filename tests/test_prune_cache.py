"""The pruned-model cache: keyed by the code, re-pruned on --force, verified before it is served,
one creation per key across real processes. Tiny random models; a cell's pruning is called directly."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from filelock import FileLock

from harness.checkpoint import MANIFEST_NAME, UNRECORDED, load_pruned, save_pruned, verify_checkpoint
from harness.prune_cache import PrunedModelCache, code_fingerprint, fingerprinted_files, folder_bytes, source_digest
from methods.arch import adapt

REPO = Path(__file__).resolve().parents[1]


class Creator:
    """A create() for the cache: saves a tiny pruned model and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path) -> None:
        self.calls += 1
        a = adapt(tiny_model("llama", layers=3))
        a.remove_layers([1])
        save_pruned(a, None, path)


def cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "harness.prune_cache" and r.levelno >= logging.WARNING]


def test_the_code_fingerprint_covers_every_module_pruning_imports_and_nothing_else(tmp_path):
    """The key is derived from the import closure of the pruning entry point, not from a list kept by hand: a
    change to any module ``prunebench prune`` imports (the slow tokenizer, imported only inside a function, or
    a method the registry names as a string) gives a new key; a change to reporting code does not."""
    import harness

    base = Path(harness.__file__).resolve().parent.parent
    closure = {f.relative_to(base).as_posix() for f in fingerprinted_files(base)}
    assert {"harness/pruning.py", "harness/slow_tokenizer.py", "harness/checkpoint.py", "harness/models.py",
            "methods/twossp.py", "methods/slicegpt_layers.py", "methods/nll.py"} <= closure
    assert not {"harness/cli.py", "harness/report/leaderboard.py", "harness/bench/runner.py"} & closure
    # no metric: a change to how a pruned model is measured must not prune every model again
    assert not [f for f in closure if f.startswith("harness/metrics/")]
    for package in ("harness", "methods"):
        shutil.copytree(base / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    files = fingerprinted_files(tmp_path)
    assert {f.relative_to(tmp_path).as_posix() for f in files} == closure
    before = source_digest(files, tmp_path)
    for rel in sorted(closure):  # a comment added anywhere: the closure is the same, the key is not
        original = (tmp_path / rel).read_bytes()
        (tmp_path / rel).write_bytes(original + b"\n# a fix\n")
        assert source_digest(files, tmp_path) != before, rel
        (tmp_path / rel).write_bytes(original)
    (tmp_path / "harness/report/leaderboard.py").write_text("# reporting only\n")
    assert source_digest(fingerprinted_files(tmp_path), tmp_path) == before

    real = code_fingerprint()
    assert set(real) == {"code", "torch", "transformers"} and len(real["code"]) == 16
    assert real["torch"] == str(torch.__version__) and real is not code_fingerprint()  # a copy each time


def test_reprune_creates_again_even_over_a_valid_entry(tmp_path):
    cache, create = PrunedModelCache(tmp_path), Creator()
    entry, created, _ = cache.obtain("k", create)
    assert created and create.calls == 1 and verify_checkpoint(entry) is None
    assert cache.obtain("k", create)[:2] == (entry, False) and create.calls == 1
    assert cache.obtain("k", create, reprune=True)[:2] == (entry, True) and create.calls == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.lock"]


def test_the_least_recently_used_entries_go_first_when_the_folder_is_over_its_limit(tmp_path, caplog):
    create = Creator()
    sizing = PrunedModelCache(tmp_path / "sizing").obtain("k", create).entry
    one = folder_bytes(sizing)
    cache = PrunedModelCache(tmp_path / "c", max_bytes=int(2.5 * one), min_free_fraction=0.0)
    for key in ("a", "b"):
        cache.obtain(key, create)
    os.utime(cache.entry("a"), (1, 1)), os.utime(cache.entry("b"), (2, 2))  # a used last long ago, then b
    assert cache.obtain("a", create)[1] is False  # served: now a is the most recently used
    with caplog.at_level(logging.INFO, logger="harness.prune_cache"):
        cache.obtain("c", create)
    assert sorted(p.name for p in cache.root.iterdir() if p.is_dir()) == ["a", "c"]  # b, the least recent, went
    assert any("evicted the least recently used cache entry" in m and "/b " in m for m in caplog.messages)
    # Over a limit of one entry: a, served moments ago, stays (a process may still be loading it) ...
    tight = PrunedModelCache(cache.root, max_bytes=one, min_free_fraction=0.0)
    assert tight.evict(keep="c") == []
    # ... and, used long ago, it still stays while another process holds its lock; the overflow is said.
    os.utime(cache.entry("a"), (3, 3))
    with FileLock(cache.root / "a.lock"):
        with caplog.at_level(logging.WARNING, logger="harness.prune_cache"):
            assert tight.evict(keep="c") == []
    assert any("nothing more can be evicted" in m for m in caplog.messages)
    assert tight.evict(keep="c") == ["a"] and verify_checkpoint(tight.entry("c")) is None


def test_a_disk_short_of_space_evicts_before_creating(tmp_path):
    create = Creator()
    cache = PrunedModelCache(tmp_path, max_bytes=None, min_free_fraction=0.0)
    for key in ("a", "b"):
        cache.obtain(key, create)
    cache.min_free_fraction = 1.0  # no file system is ever this free: every other entry must go
    for key in ("a", "b"):
        os.utime(cache.entry(key), (1, 1))  # last used long ago (moments ago, they would be kept)
    assert cache.obtain("c", create)[1] is True
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["c"]


@pytest.mark.parametrize("value", ["ten", "-1", "nan"])
def test_a_bad_cache_limit_is_one_line(monkeypatch, value):
    from harness.errors import PrunebenchError
    from harness.paths import cache_size_limit

    monkeypatch.setenv("PRUNEBENCH_CACHE_MAX_GB", value)
    with pytest.raises(PrunebenchError, match=r"PRUNEBENCH_CACHE_MAX_GB=.*: give a number of gigabytes"):
        cache_size_limit()
    monkeypatch.setenv("PRUNEBENCH_CACHE_MAX_GB", "1.5")
    assert cache_size_limit() == 3 * 2**29


def test_a_failed_create_leaves_nothing_half_written(tmp_path):
    def crash(path: Path) -> None:
        (path.with_name(f".{path.name}.tmp-{os.getpid()}")).mkdir()  # as save_pruned does before it writes
        raise RuntimeError("pruning failed")

    cache = PrunedModelCache(tmp_path)
    with pytest.raises(RuntimeError, match="pruning failed"):
        cache.obtain("k", crash)
    assert [p.name for p in tmp_path.iterdir()] == ["k.lock"]


def damage_truncate(weights: Path) -> None:
    weights.write_bytes(weights.read_bytes()[:1000])


def damage_flip(weights: Path) -> None:
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a tensor byte: the header still parses, the size is right
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (damage_truncate, r"model\.safetensors: 1000 bytes, expected \d+"),
    (damage_flip, r"model\.safetensors: sha256 differs from the one recorded"),
])
def test_a_damaged_entry_is_reported_once_and_pruned_again(tmp_path, caplog, damage, reason):
    cache, create = PrunedModelCache(tmp_path), Creator()
    entry, *_ = cache.obtain("k", create)
    damage(entry / "model.safetensors")
    assert re.fullmatch(reason, verify_checkpoint(entry))
    caplog.set_level(logging.INFO, logger="harness.prune_cache")
    again = cache.obtain("k", create)
    assert again[:2] == (entry, True) and create.calls == 2
    assert again.repair.startswith("corrupt (") and re.search(reason, again.repair)  # recorded in the cell's result
    [warning] = cache_warnings(caplog)
    assert str(entry) in warning and "is corrupt (" in warning and warning.endswith("); pruning again")
    assert re.search(reason, warning)
    assert verify_checkpoint(entry) is None and load_pruned(entry).config.num_hidden_layers == 2


def test_an_entry_without_a_file_list_still_loads_but_is_pruned_again(tmp_path, caplog):
    cache, create = PrunedModelCache(tmp_path), Creator()
    entry, *_ = cache.obtain("k", create)
    manifest = json.loads((entry / MANIFEST_NAME).read_text())
    del manifest["files"]  # as written before checkpoints recorded their files
    (entry / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert verify_checkpoint(entry) == UNRECORDED
    assert load_pruned(entry).config.num_hidden_layers == 2  # a user's older checkpoint keeps working
    caplog.set_level(logging.INFO, logger="harness.prune_cache")
    assert cache.obtain("k", create)[:2] == (entry, True) and create.calls == 2
    [warning] = cache_warnings(caplog)
    assert "is unverifiable (" in warning and str(entry) in warning
    assert "files" in json.loads((entry / MANIFEST_NAME).read_text())


def test_verify_names_what_is_wrong(tmp_path):
    entry, *_ = PrunedModelCache(tmp_path).obtain("k", Creator())
    records = json.loads((entry / MANIFEST_NAME).read_text())["files"]
    assert {"model.safetensors", "config.json"} <= set(records)
    assert all(len(r["sha256"]) == 64 and r["size"] == (entry / n).stat().st_size for n, r in records.items())
    (entry / "config.json").unlink()
    assert verify_checkpoint(entry) == "config.json is missing"
    (entry / MANIFEST_NAME).write_text("{not json")
    assert verify_checkpoint(entry).startswith(f"{MANIFEST_NAME} is unreadable")
    (entry / MANIFEST_NAME).unlink()
    assert verify_checkpoint(entry) == f"no {MANIFEST_NAME}"


CONTENDER = """
import json, logging, sys, time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from harness.checkpoint import save_pruned
from harness.prune_cache import PrunedModelCache
from methods.arch import adapt

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
root, counter, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def create(path):
    with counter.open("a") as f:
        f.write(name + "\\n")
    time.sleep(2)  # long enough that the other process surely asks meanwhile
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)
    save_pruned(adapt(AutoModelForCausalLM.from_config(config)), None, path)


(root.parent / f"ready-{name}").touch()  # start together: both imports done before either asks
while len(list(root.parent.glob("ready-*"))) < 2:
    time.sleep(0.01)
path, created, _ = PrunedModelCache(root).obtain("key", create)
print(json.dumps({"path": str(path), "created": created}))
"""


def test_two_processes_on_one_key_prune_once_and_share_the_entry(tmp_path):
    script, root, counter = tmp_path / "contend.py", tmp_path / "cache", tmp_path / "created.txt"
    script.write_text(CONTENDER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(counter), name], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    answers = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert len(counter.read_text().splitlines()) == 1  # create ran exactly once
    assert sorted(a["created"] for a in answers) == [False, True]
    assert answers[0]["path"] == answers[1]["path"] and verify_checkpoint(answers[0]["path"]) is None
    waiter = next(err for (_, err), a in zip(outputs, answers, strict=True) if not a["created"])
    assert "waiting for it" in waiter and "waited" in waiter
    assert sorted(p.name for p in root.iterdir()) == ["key", "key.lock"]  # no temporary directory left


def test_force_has_each_cell_prune_again_without_changing_what_it_computes(tmp_path, monkeypatch):
    from harness.bench.config import BenchConfig
    from harness.bench.expand import resolve
    from harness.bench.runner import plan_jobs
    from harness.hashing import NOT_HASHED

    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    bench = resolve(BenchConfig(methods=["shortgpt"], sparsities=[0.25], profile="cpu-quick",
                                out=tmp_path / "out"))
    [plain], _ = plan_jobs(bench, force=False)
    [forced], _ = plan_jobs(bench, force=True)
    assert (plain.spec.reprune, forced.spec.reprune) == (False, True)
    assert json.loads(forced.spec_path.read_text())["reprune"] is True  # what the cell process reads
    assert forced.spec.config_hash() == plain.spec.config_hash() and "reprune" in NOT_HASHED


# --- the cell's side: harness.bench.cell.prune_or_reuse on a tiny local model ---


class CharTokenizer:
    """Enough of a tokenizer for calibration and save_pruned: one id per character."""

    def __call__(self, text, **_):
        return {"input_ids": [3 + ord(c) % 125 for c in text]}

    def save_pretrained(self, directory):
        Path(directory, "tokenizer.json").write_text('{"kind": "chars"}')


@pytest.fixture
def cell_setup(tmp_path, monkeypatch):
    """A tiny local model, calibration text, a cache in tmp_path; make(id, **spec) -> (spec, loaded)."""
    from harness.bench.config import CellSpec, profile_defaults
    from harness.data.tokens import Calibration
    from harness.models import LoadedModel, resolve_model

    monkeypatch.setenv("PRUNEBENCH_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "dense"
    tiny_model("llama", layers=4).save_pretrained(model_dir)
    text = tmp_path / "calib.txt"
    text.write_text("\n\n".join(f"Paragraph {i} of a calibration text about pruning." * 3 for i in range(20)))
    defaults = profile_defaults("cpu-quick")

    def make(cell_id: str, **overrides):
        spec = CellSpec(**{
            "id": cell_id, "model": str(model_dir), "method": "shortgpt", "variant": "shortgpt",
            "sparsity": 0.25, "seed": 0, "profile": "cpu-quick", "method_options": {},
            "calibration": Calibration(source=f"text:{text}", samples=2, seq_len=16),
            "perplexity": defaults["perplexity"], "downstream": defaults["downstream"],
            "latency": defaults["latency"], "qualitative": defaults["qualitative"],
            "dtype": "float32", "device": "cpu", "trust_remote_code": False, "cache_pruned": True,
            **overrides})
        loaded = LoadedModel(resolve_model(str(model_dir)), tiny_model("llama", layers=4), CharTokenizer(),
                             torch.float32, torch.device("cpu"))
        return spec, loaded

    return make


def test_a_cell_served_from_the_cache_reports_the_run_that_pruned_it(cell_setup, monkeypatch, caplog):
    import harness.checkpoint
    import harness.prune_cache
    from harness.bench.cell import PeakMemory, prune_or_reuse

    ids = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    first_adapter, first, peak = prune_or_reuse(*cell_setup("first", run="runs/x at 2026-12-06T10:00:00"),
                                                PeakMemory())
    assert not first.from_cache and first.cache_key and peak and first.cache_repair is None
    assert first.pruned_by.cell == "first" and first.pruned_by.finished_at.endswith("+00:00")
    assert first.pruned_by.run == "runs/x at 2026-12-06T10:00:00"  # which run, not only which cell id
    assert (set(type(first.pruned_by).model_fields) == {"cell", "run", "finished_at", "git", "hardware"}
            and first.pruned_by.hardware)

    adapter, second, peak = prune_or_reuse(*cell_setup("second"), PeakMemory())
    assert second.from_cache and second.cache_key == first.cache_key and peak == {}
    assert second.pruned_by == first.pruned_by and second.decisions == first.decisions
    with torch.no_grad():
        assert torch.equal(adapter.model(ids).logits, first_adapter.model(ids).logits)
    # The reloaded model carries the dense config and the edits, as the freshly pruned one does (exports read them).
    assert adapter.ops == first_adapter.ops and adapter.ops
    assert adapter.base_config["num_hidden_layers"] == first_adapter.base_config["num_hidden_layers"] == 4

    # --force: pruned again, by this run.
    _, forced, _ = prune_or_reuse(*cell_setup("forced", reprune=True), PeakMemory())
    assert not forced.from_cache and forced.cache_key == first.cache_key
    assert forced.pruned_by.cell == "forced"

    # An entry that verifies but does not load: one warning, pruned again once, no loop.
    calls = []

    def broken_load(path, **kwargs):
        calls.append(path)
        raise RuntimeError("cannot rebuild\nsecond line")

    real_load = harness.checkpoint.load_pruned
    monkeypatch.setattr(harness.checkpoint, "load_pruned", broken_load)
    caplog.set_level(logging.INFO)
    _, healed, _ = prune_or_reuse(*cell_setup("healed"), PeakMemory())
    assert len(calls) == 1 and not healed.from_cache and healed.pruned_by.cell == "healed"
    assert healed.cache_repair == "not loading (RuntimeError: cannot rebuild)"  # recorded in the cell's result
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "is not loading (RuntimeError: cannot rebuild); pruning again" in warning
    monkeypatch.setattr(harness.checkpoint, "load_pruned", real_load)

    # Another code fingerprint (a fix to a method): another key, the cached model is not served.
    monkeypatch.setattr(harness.prune_cache, "code_fingerprint", lambda: {"code": "0" * 16, "torch": "x"})
    _, fixed, _ = prune_or_reuse(*cell_setup("fixed"), PeakMemory())
    assert not fixed.from_cache and fixed.cache_key != first.cache_key and fixed.pruned_by.cell == "fixed"
