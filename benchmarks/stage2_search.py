"""2SSP stage 2 on the default model, three ways, same inputs: the decisions must be identical.

- straightforward: for every candidate, the model's own forward (full logits) and its loss, as the
  authors' harness computes perplexity;
- uncached: for every candidate, a forward of the decoder stack from the embeddings, with the
  bounded-memory head of prunebench;
- cached (prunebench): resume from the cached hidden state entering the candidate's layer.

Prints the wall time of each and the ratios; exits 1 if the decisions differ or the cached search is
not at least --min-ratio times faster than the straightforward one.

    python benchmarks/stage2_search.py [--sparsity 0.375] [--seq-len 512] [--calib-samples 8]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch
import torch.nn.functional as F


def straightforward_search(adapter, sample: torch.Tensor, n: int) -> tuple[list[int], list[float]]:
    order, best_ppl = [], []
    ids = sample[None]
    for _ in range(n):
        scores = {}
        for i in range(adapter.num_layers):
            if not adapter.has_attention(i):
                continue
            with adapter.without(attention=[i]), torch.no_grad():
                logits = adapter.model(input_ids=ids, use_cache=False).logits
                loss = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
            scores[i] = math.exp(loss.item())
        best = min(scores, key=lambda i: (scores[i], i))
        adapter.remove_attention(best)
        order.append(best)
        best_ppl.append(scores[best])
    return order, best_ppl


def main() -> int:
    from harness.data.sources import load_corpus
    from harness.data.tokens import calibration_samples, tokenize
    from harness.models import load_model, resolve_model
    from methods import get_method
    from methods.arch import adapt
    from methods.base import PruneContext
    from methods.twossp import greedy_attention_removal

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.375)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--min-ratio", type=float, default=1.8)
    args = ap.parse_args()

    loaded = load_model(resolve_model("smollm2-135m"), dtype="float32", device="cpu")
    tokens = tokenize(loaded.tokenizer, load_corpus("enwiki-sample", "calibration"))
    calib = calibration_samples(tokens, args.calib_samples, args.seq_len)
    method = get_method("2ssp")
    width_only = method.options({"stages": "width"})
    plan = method.plan(adapt(loaded.model), args.sparsity, method.options())
    stage1 = adapt(loaded.model)
    # Stage 1 with the width of the full method's plan, so stage 2 starts from the real stage-1 model.
    method._stage1(stage1, width_only, PruneContext(calib, args.sparsity), plan["kept_width"])
    n = plan["n_attn"]
    print(f"SmolLM2-135M, sparsity {args.sparsity}: stage 1 kept {plan['kept_width']} neurons per layer; "
          f"stage 2 removes {n} attention modules, {n * 30 - n * (n - 1) // 2} candidate evaluations on 1 x {args.seq_len} tokens")

    runs = {}
    for name in ("straightforward", "uncached", "cached"):
        adapter = adapt(copy.deepcopy(stage1.model))
        start = time.perf_counter()
        if name == "straightforward":
            decisions = straightforward_search(adapter, calib[0], n)
        else:
            decisions = greedy_attention_removal(adapter, calib[:1], n, PruneContext(calib, args.sparsity), cached=name == "cached")
        runs[name] = (time.perf_counter() - start, decisions)
        print(f"{name:16s} {runs[name][0]:8.2f} s  removed {decisions[0]}  ppl {[round(p, 4) for p in decisions[1]]}")

    same = runs["cached"][1][0] == runs["uncached"][1][0] == runs["straightforward"][1][0]
    ratio = runs["straightforward"][0] / runs["cached"][0]
    print(f"identical decisions: {same}")
    print(f"speed-up of the cached search: {ratio:.2f}x over straightforward, "
          f"{runs['uncached'][0] / runs['cached'][0]:.2f}x over uncached (target >= {args.min_ratio}x)")
    return 0 if same and ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
