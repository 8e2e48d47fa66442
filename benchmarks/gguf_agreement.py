"""GGUF exports of a bench's pruned models, scored by llama.cpp against prunebench, with their sizes.

For every cell of RUN_DIR at --sparsity whose pruned model is in the prune cache (a bench pruned it),
and for the dense model: export to F32, F16 and Q8_0 GGUF, score --windows windows of the offline
evaluation text in llama.cpp (llama-cpp-python) and in prunebench (float32), and print the sizes and
the relative perplexity difference. Exits 1 if an F32 export differs by more than --rtol.

    python benchmarks/gguf_agreement.py runs/smollm2-135m [--sparsity 0.375] [--windows 8] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def llama_cpp_perplexity(path: Path, windows: torch.Tensor, threads: int) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=windows.shape[1] + 8, logits_all=True, n_threads=threads, verbose=False)
    try:
        nll, count = 0.0, 0
        for window in windows.tolist():
            llm.reset()
            llm.eval(window)
            logits = torch.from_numpy(np.array(llm.scores[: len(window)], dtype=np.float64))
            logp = torch.log_softmax(logits[:-1], dim=-1)
            nll -= logp[torch.arange(len(window) - 1), torch.tensor(window[1:])].sum().item()
            count += len(window) - 1
        return math.exp(nll / count)
    finally:
        llm.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--sparsity", type=float, default=0.375)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rtol", type=float, default=2e-3)
    args = parser.parse_args()

    from harness.checkpoint import load_pruned
    from harness.data.sources import load_corpus
    from harness.data.tokens import eval_windows, tokenize
    from harness.export import ExportRefused, export, export_model
    from harness.metrics.perplexity import score_windows
    from harness.models import load_model, resolve_model
    from harness.paths import cache_dir
    from methods.arch import adapt

    dense = load_model(resolve_model("smollm2-135m"), dtype="float32", device="cpu")
    windows = eval_windows(tokenize(dense.tokenizer, load_corpus("enwiki-sample", "evaluation")), args.seq_len,
                           args.windows)
    rows: list[tuple[str, str | Path]] = [("dense", "")]
    for file in sorted((args.run_dir / "cells").glob("*.json")):
        result = json.loads(file.read_text())
        pruning = result.get("pruning") or {}
        if result.get("status") == "ok" and pruning.get("cache_key") and \
                abs(result["cell"]["sparsity"] - args.sparsity) < 1e-9:
            rows.append((result["cell"]["method"], cache_dir() / "pruned" / pruning["cache_key"]))
    worst = 0.0
    print("| method | F32 MB | F16 MB | Q8_0 MB | prunebench PPL | llama.cpp PPL (F32) | rel. diff | Q8_0 PPL |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for method, entry in rows:
            source = {"name": "smollm2-135m", "kind": "embedded"}
            if method == "dense":
                adapter = adapt(dense.model)
            else:
                if not Path(entry).is_dir():
                    print(f"| {method} | (not in the prune cache: {entry}) |")
                    continue
                adapter = adapt(load_pruned(entry, dtype=torch.float32, device="cpu"))
            nll, count = score_windows(adapter, windows)
            ours = math.exp(nll / count)
            sizes, ppl = {}, {}
            for dtype in ("f32", "f16", "q8_0"):
                out = Path(tmp) / f"{method}-{dtype}.gguf"
                try:
                    report = export(entry, "gguf", out, dtype) if method != "dense" else \
                        export_model(adapter, dense.tokenizer, source, "gguf", out, dtype)
                except ExportRefused as err:  # SliceGPT: a row saying why, not a crash
                    print(f"| {method} | refused: {str(err).splitlines()[0]} |")
                    break
                sizes[dtype] = report.bytes / 1e6
                if dtype in ("f32", "q8_0"):
                    ppl[dtype] = llama_cpp_perplexity(out, windows, args.threads)
                out.unlink()
            else:
                diff = ppl["f32"] / ours - 1
                worst = max(worst, abs(diff))
                print(f"| {method} | {sizes['f32']:.1f} | {sizes['f16']:.1f} | {sizes['q8_0']:.1f} | {ours:.3f} | "
                      f"{ppl['f32']:.3f} | {diff * 100:+.4f} % | {ppl['q8_0']:.3f} |")
    print(f"\nlargest F32 difference: {worst * 100:.4f} % (limit {args.rtol * 100:.2f} %)")
    return 1 if worst > args.rtol else 0


if __name__ == "__main__":
    sys.exit(main())
