"""2SSP stage 2 on the default model, several ways, same inputs, same decisions required.

- straightforward: every candidate through the model's own forward (full logits) and its loss, as the
  authors' harness computes perplexity;
- cached: resume from the cached hidden state entering the candidate's layer, candidates run through
  their remaining layers together (--batch at a time), full LM head for every candidate;
- prunebench (what `prunebench prune --method 2ssp` runs): cached, and the full LM head only for the
  candidates whose lower bound on a slice of the vocabulary does not already prove them worse;
- with --all-modes also: uncached (every candidate from the embeddings, prunebench's bounded-memory
  head) and cached with batch 1.

They run in lockstep, step by step of the greedy search, so that load on a shared machine hits all
of them alike. Prints wall times and ratios; exits 1 if the decisions or the chosen perplexities
differ, or if prunebench's search is not at least --min-ratio times faster than the straightforward one.

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


def straightforward(adapter, sample: torch.Tensor, layers: list[int]) -> list[float]:
    ids = sample[None]
    scores = []
    for i in layers:
        with adapter.without(attention=[i]), torch.no_grad():
            logits = adapter.model(input_ids=ids, use_cache=False).logits
            scores.append(math.exp(F.cross_entropy(logits[0, :-1].float(), ids[0, 1:]).item()))
    return scores


def main() -> int:
    from harness.data.sources import load_corpus
    from harness.data.tokens import calibration_samples, tokenize
    from harness.models import load_model, resolve_model
    from methods import get_method
    from methods.arch import adapt
    from methods.base import PruneContext
    from methods.search import Candidate, PerplexityProbe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.375)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8, help="candidates per batch in the batched search")
    ap.add_argument("--min-ratio", type=float, default=1.8)
    ap.add_argument("--screen", type=float, default=get_method("2ssp").options().screen_vocab,
                    help="vocabulary part of the bound")
    ap.add_argument("--all-modes", action="store_true", help="also time the uncached and batch-1 searches")
    args = ap.parse_args()
    torch.manual_seed(0)

    loaded = load_model(resolve_model("smollm2-135m"), dtype="float32", device="cpu")
    tokens = tokenize(loaded.tokenizer, load_corpus("enwiki-sample", "calibration"))
    calib = calibration_samples(tokens, args.calib_samples, args.seq_len)
    method = get_method("2ssp")
    plan = method.plan(adapt(loaded.model), args.sparsity, method.options())
    stage1 = adapt(loaded.model)
    # Stage 1 with the width of the full method's plan, so stage 2 starts from the real stage-1 model.
    method._stage1(stage1, method.options({"stages": "width"}), PruneContext(calib, args.sparsity), plan["kept_width"])
    n, L = plan["n_attn"], stage1.num_layers
    total = n * L - n * (n - 1) // 2
    print(f"SmolLM2-135M at sparsity {args.sparsity}: stage 1 kept {plan['kept_width']} of 1536 neurons per layer; "
          f"stage 2 removes {n} attention modules: {total} candidates on 1 x {args.seq_len} tokens")

    b = args.batch
    probes = {
        f"cached, batch {b}": dict(cached=True, batch=b),
        "prunebench": dict(cached=True, batch=b, screen=args.screen),
    }
    if args.all_modes:
        probes = {"uncached": dict(cached=False), "cached, batch 1": dict(cached=True, batch=1), **probes}
    modes = ["straightforward", *probes]
    adapters = {m: adapt(copy.deepcopy(stage1.model)) for m in modes}
    seconds = dict.fromkeys(modes, 0.0)
    built = {}
    for m, kw in probes.items():  # the initial trace is part of each search's cost
        start = time.perf_counter()
        built[m] = PerplexityProbe(adapters[m], calib[:1], **kw)
        seconds[m] += time.perf_counter() - start
    removed: dict[str, list[int]] = {m: [] for m in modes}
    chosen: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(n):
        for m in modes:
            a = adapters[m]
            layers = [i for i in range(L) if a.has_attention(i)]
            start = time.perf_counter()
            if m == "straightforward":
                scores = straightforward(a, calib[0], layers)
                k = min(range(len(layers)), key=lambda k: (scores[k], layers[k]))
                ppl = scores[k]
            else:
                k, ppl = built[m].best([Candidate(i, attention=True) for i in layers],
                                       lambda k, p, layers=layers: (p, layers[k]))
            a.remove_attention(layers[k])
            if m != "straightforward":
                built[m].committed(layers[k])
            seconds[m] += time.perf_counter() - start
            removed[m].append(layers[k])
            chosen[m].append(ppl)

    for m in modes:
        print(f"{m:18s} {seconds[m]:8.2f} s   removed attention of layers {removed[m]}, "
              f"perplexities {[round(p, 4) for p in chosen[m]]}")
    same = all(removed[m] == removed[modes[0]] for m in modes)
    # The probes share one code path for the exact perplexity: bit-for-bit equal. The straightforward
    # one takes the loss over the model's own logits: equal up to float rounding.
    same_ppl = all(chosen[m] == chosen[modes[-1]] for m in probes) and all(
        math.isclose(p, q, rel_tol=1e-5) for p, q in zip(chosen["straightforward"], chosen["prunebench"], strict=True)
    )
    print(f"identical decisions: {same}; identical chosen perplexities: {same_ppl}")
    print(f"full LM head evaluated for {built['prunebench'].exact_evaluations} of {total} candidates")
    cached = f"cached, batch {b}"
    if args.all_modes:
        print(f"cached over uncached, both batch 1: {seconds['uncached'] / seconds['cached, batch 1']:.2f}x; "
              f"batching the cached search: {seconds['cached, batch 1'] / seconds[cached]:.2f}x")
    print("cached (full head for all) over the straightforward one: "
          f"{seconds['straightforward'] / seconds[cached]:.2f}x; "
          f"the bound on top of caching: {seconds[cached] / seconds['prunebench']:.2f}x")
    ratio = seconds["straightforward"] / seconds["prunebench"]
    print(f"prunebench's stage 2 over the straightforward one: {ratio:.2f}x (target >= {args.min_ratio}x)")
    return 0 if same and same_ppl and ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
