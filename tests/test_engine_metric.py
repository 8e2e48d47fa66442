"""The engine metric: off unless asked for, its settings checked in one line, its leaderboard cells and CSV, and
real bench cells that export and time a pruned model in llama.cpp, or say why GGUF cannot hold it (SliceGPT)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_engine import needs_llama_cpp

from harness.bench.config import BenchConfig, CellSpec, metric_config
from harness.engine.llamacpp import VERSION, EngineSettings
from harness.errors import PrunebenchError, UnknownName
from harness.metrics.engine import (
    EngineConfig,
    EngineNotRun,
    EngineProtocol,
    EngineScore,
    EngineTimings,
    GGUFFile,
)
from harness.metrics.latency import speedup, summarize
from harness.metrics.registry import METRICS
from harness.profiles import PROFILES
from harness.results import CellResult, read_result, scan_results

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "smollm2-135m" / "cells"
OLD_CELLS = REPO / "tests" / "records" / "smollm2-135m-6625192" / "cells"  # recorded before the engine existed
METRIC = METRICS["engine"]


def test_the_engine_is_off_in_every_profile_and_switched_on_by_a_bench_override(tmp_path):
    from harness.bench.expand import resolve

    for profile in PROFILES:
        config = metric_config("engine", profile, None)
        latency = metric_config("latency", profile, None)
        assert not config.enabled
        assert (config.prompt_tokens, config.decode_prompt) == (latency.seq_len, latency.decode_prompt)
    bench = resolve(BenchConfig(methods=["dense", "shortgpt"], sparsities=[0.25], profile="cpu-quick",
                                engine={"enabled": True, "threads": 1}, out=tmp_path / "out"))
    assert all(c.engine.enabled and c.engine.threads == 1 and c.engine.gguf_dtype == "f16" for c in bench.cells)
    assert "engine: llama.cpp on the CPU, GGUF f16, threads 1;" in METRIC.describe(bench.cells[0].engine)


def test_bad_engine_settings_are_refused_in_one_line():
    with pytest.raises(PrunebenchError, match="bench setting 'engine.repeats'"):
        metric_config("engine", "cpu-quick", {"repeats": 1})
    with pytest.raises(PrunebenchError, match="bench setting 'engine.gguf_typo'"):
        metric_config("engine", "cpu-quick", {"gguf_typo": "f16"})
    with pytest.raises(UnknownName, match="format 'gguf' has no dtype 'q4_k'"):
        METRIC.validate(EngineConfig(enabled=True, gguf_dtype="q4_k"))
    METRIC.validate(EngineConfig(enabled=False, gguf_dtype="q4_k"))  # off: nothing to check, no error


def test_make_bench_engine_1_installs_the_extra_and_passes_the_flag(tmp_path):
    def dry_run(*args: str) -> str:
        done = subprocess.run(["make", "-n", "-C", str(REPO), "bench", f"VENV={tmp_path / 'venv'}", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    with_engine = dry_run("ENGINE=1")
    assert "--engine" in with_engine and "-r requirements-engine.lock" in with_engine
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in with_engine
    plain = dry_run()
    assert "--engine" not in plain and "requirements-engine.lock" not in plain


def test_cells_recorded_before_the_engine_existed_read_as_engine_off_and_keep_their_hash_and_protocol():
    from harness.report.rows import protocol_key

    older = 0
    for path, r in scan_results(PUBLISHED)[0] + scan_results(OLD_CELLS)[0]:  # the last one is old
        assert r.engine is None
        if "engine" in json.loads(path.read_text())["config"]:
            continue
        older += 1  # recorded before the engine existed: read with the setting at its value then, off
        assert r.config["engine"] == EngineConfig().model_dump(mode="json")
        spec = CellSpec(**r.config)
        assert spec.config_hash() == r.config_hash  # a bench that asks for no engine resumes them
        assert protocol_key(r.model_copy(update={"config": spec.model_dump(mode="json")})) == protocol_key(r)
    assert older
    on = spec.model_copy(update={"engine": EngineConfig(enabled=True)})
    assert on.config_hash() != spec.config_hash()
    assert protocol_key(r.model_copy(update={"config": on.model_dump(mode="json")})) != protocol_key(r)


def _protocol() -> EngineProtocol:
    return EngineProtocol(prompt_tokens=128, decode_tokens=32, decode_prompt=16, warmup=2, repeats=4,
                          inputs="random token ids, torch.Generator seed 0",
                          settings=EngineSettings(threads=2, n_ctx=256, n_batch=128), llama_cpp_python=VERSION,
                          system_info="CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | OPENMP = 1 |")


def _timings(prefill: list[float], decode: list[float], size: int) -> EngineTimings:
    return EngineTimings(gguf=GGUFFile(dtype="f16", bytes=size, sha256="0" * 64, export_seconds=1.0, notes=[]),
                         prefill_tokens_per_s=summarize(prefill), decode_tokens_per_s=summarize(decode))


DENSE = _timings([100.0, 102.0, 98.0, 101.0], [50.0, 51.0, 49.0, 50.0], 270_000_000)


def _score(own: EngineTimings) -> EngineScore:
    return EngineScore(gguf=own.gguf, prefill_tokens_per_s=own.prefill_tokens_per_s,
                       decode_tokens_per_s=own.decode_tokens_per_s, dense_gguf=DENSE.gguf,
                       dense_prefill_tokens_per_s=DENSE.prefill_tokens_per_s,
                       dense_decode_tokens_per_s=DENSE.decode_tokens_per_s,
                       prefill_speedup=speedup(DENSE.prefill_tokens_per_s, own.prefill_tokens_per_s, True),
                       decode_speedup=speedup(DENSE.decode_tokens_per_s, own.decode_tokens_per_s, True),
                       protocol=_protocol())


REFUSED = EngineNotRun(reason="cannot export the model as gguf: its edits rotate have no GGUF form", dense=DENSE,
                       protocol=_protocol())


def test_cells_and_csv_of_a_measured_and_a_refused_result():
    score = _score(_timings([200.0, 204.0, 196.0, 202.0], [75.0, 76.0, 74.0, 75.0], 200_000_000))
    prefill, decode = METRIC.cells([score], None)
    assert prefill.startswith("2.00x [") and decode.startswith("1.50x [")
    low, high = (float(x.rstrip("x]")) for x in decode.split("[")[1].split(", "))
    assert low <= 1.5 <= high
    row = METRIC.csv(score)
    assert (row["engine_status"], row["engine_gguf_bytes"], row["engine_threads"]) == ("measured", 200_000_000, 2)
    assert row["engine_decode_speedup"] == pytest.approx(1.5) and row["engine_dense_decode_tokens_per_s"] == 50.0
    assert METRIC.cells([REFUSED], None) == ["no GGUF: its edits rotate have no GGUF form", "-"]
    assert METRIC.csv(REFUSED) == {"engine_status": "not exportable", "engine_reason": REFUSED.reason}
    [line] = METRIC.protocol_lines(score)
    assert "llama-cpp-python 0.3.36, threads 2, build SSE3, AVX2, OPENMP" in line and "GGUF f16" in line
    # timings: reported, not judged
    assert METRIC.tolerance is None and [c.ok for c in METRIC.compare(score, score, None)] == [None, None]


def test_results_keep_their_kind_and_the_columns_stand_beside_the_pytorch_speed_ups():
    from harness.report.leaderboard import markdown

    results = []
    for path, _ in scan_results(PUBLISHED)[0]:
        r = read_result(path)
        if r.cell.method == "slicegpt":
            engine = REFUSED
        else:
            engine = _score(DENSE if r.cell.method == "dense" else _timings([150.0, 151.0, 149.0, 152.0],
                                                                              [60.0, 61.0, 59.0, 60.0], 1))
        again = CellResult.model_validate(json.loads(r.model_copy(update={"engine": engine}).model_dump_json()))
        assert type(again.engine) is type(engine) and again.engine == engine
        results.append(again)
    text = markdown(results, [], [])
    header = next(line for line in text.splitlines() if "llama.cpp prefill" in line)
    columns = [c.strip() for c in header.strip().strip("|").split("|")]
    at = columns.index("decode speed-up [95 % CI]")  # PyTorch's, then llama.cpp's
    assert columns[at + 1:at + 3] == ["llama.cpp prefill speed-up [95 % CI]", "llama.cpp decode speed-up [95 % CI]"]
    assert "| slicegpt " in text and "no GGUF: its edits rotate have no GGUF form" in text
    assert "- engine: llama.cpp on the CPU" in text


@needs_llama_cpp
@pytest.mark.real_model
def test_bench_cells_time_their_pruned_model_and_the_dense_one_and_report_what_gguf_cannot_hold(tmp_path):
    from harness.paths import cache_dir

    tiny = {
        "model": "smollm2-135m", "profile": "cpu-quick", "methods": ["dense", "shortgpt", "slicegpt"],
        "sparsities": [0.25],
        "perplexity": {"datasets": ["enwiki-sample"], "seq_len": 64, "max_windows": 2},
        "downstream": {"enabled": False}, "qualitative": {"enabled": False},
        "latency": {"seq_len": 16, "warmup": 1, "repeats": 2, "decode_tokens": 2, "decode_prompt": 8},
        "engine": {"threads": 1, "prompt_tokens": 16, "decode_prompt": 8, "decode_tokens": 4, "warmup": 1,
                   "repeats": 3},
        "calibration": {"samples": 2, "seq_len": 64},
    }
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(tiny))
    temporary = set(cache_dir().glob("engine-*"))
    done = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--engine", "--config",
                           str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    dense = read_result(tmp_path / "out" / "cells" / "dense.json").engine
    pruned = read_result(tmp_path / "out" / "cells" / "shortgpt-s0.25-seed0.json").engine
    assert isinstance(dense, EngineScore) and isinstance(pruned, EngineScore)
    assert dense.decode_speedup.value == 1.0 and dense.gguf == dense.dense_gguf  # itself, timed once
    assert pruned.dense_gguf.sha256 == dense.gguf.sha256  # the same dense export in both cells
    assert pruned.gguf.bytes < pruned.dense_gguf.bytes and pruned.gguf.dtype == "f16"
    for timing in (pruned.prefill_tokens_per_s, pruned.decode_tokens_per_s, pruned.dense_decode_tokens_per_s):
        assert timing.repeats == 3 and all(v > 0 for v in timing.samples)
    s = pruned.decode_speedup
    assert s.interval.low <= s.value <= s.interval.high
    p = pruned.protocol
    assert (p.settings.threads, p.prompt_tokens, p.decode_tokens, p.llama_cpp_python) == (1, 16, 4, VERSION)
    assert "AVX" in p.system_info or "NEON" in p.system_info
    # SliceGPT: the export refuses its rotated residual stream; the cell is fine and says why.
    sliced = read_result(tmp_path / "out" / "cells" / "slicegpt-s0.25-seed0.json")
    assert sliced.status == "ok" and isinstance(sliced.engine, EngineNotRun)
    assert "SliceGPT" in sliced.engine.reason and sliced.engine.dense.gguf.sha256 == dense.gguf.sha256
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "llama.cpp decode speed-up [95 % CI]" in board and "- engine: llama.cpp on the CPU" in board
    assert "| no GGUF: its edits slicegpt (SliceGPT's" in board
    assert set(cache_dir().glob("engine-*")) == temporary  # this bench's temporary GGUFs are gone


def test_an_extra_metric_is_off_by_default_and_out_of_the_hash_while_off():
    """The engine says it is an extra (Metric.extra); its default config is off, so its config joins no cell's hash
    until it is turned on, and a record made before it existed reads as having it off."""
    from harness.hashing import EXTRAS
    from harness.metrics.registry import METRICS

    assert EXTRAS == {"engine"}
    for name in EXTRAS:
        assert METRICS[name].config_type().enabled is False
