"""2SSP stage 2 on the default model, four ways, same inputs, same decisions required.

- straightforward: every candidate through the model's own forward (full logits) and its loss, as the
  authors' harness computes perplexity;
- uncached: every candidate through the decoder stack from the embeddings, with prunebench's
  bounded-memory head;
- cached, batch 1: resume from the cached hidden state entering the candidate's layer;
- cached, batched (what prunebench runs): the same, candidates run through their layers together.

The four run in lockstep, step by step of the greedy search, so that load on a shared machine hits
all of them alike. Prints wall times and ratios; exits 1 if the decisions differ or prunebench's
search is not at least --min-ratio times faster than the straightforward one.

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
    print(f"SmolLM2-135M at sparsity {args.sparsity}: stage 1 kept {plan['kept_width']} of 1536 neurons per layer; "
          f"stage 2 removes {n} attention modules: {n * L - n * (n - 1) // 2} candidates on 1 x {args.seq_len} tokens")

    modes = ["straightforward", "uncached", "cached, batch 1", f"cached, batch {args.batch}"]
    adapters = {m: adapt(copy.deepcopy(stage1.model)) for m in modes}
    probes = {
        "uncached": PerplexityProbe(adapters["uncached"], calib[:1], cached=False),
        "cached, batch 1": PerplexityProbe(adapters["cached, batch 1"], calib[:1], cached=True, batch=1),
        modes[3]: PerplexityProbe(adapters[modes[3]], calib[:1], cached=True, batch=args.batch),
    }
    seconds = dict.fromkeys(modes, 0.0)
    removed: dict[str, list[int]] = {m: [] for m in modes}
    for _ in range(n):
        for m in modes:
            a = adapters[m]
            layers = [i for i in range(L) if a.has_attention(i)]
            start = time.perf_counter()
            if m == "straightforward":
                scores = straightforward(a, calib[0], layers)
            else:
                scores = probes[m].perplexities([Candidate(i, attention=True) for i in layers])
            best = layers[min(range(len(layers)), key=lambda k: (scores[k], layers[k]))]
            a.remove_attention(best)
            if m != "straightforward":
                probes[m].committed(best)
            seconds[m] += time.perf_counter() - start
            removed[m].append(best)

    for m in modes:
        print(f"{m:18s} {seconds[m]:8.2f} s   removed attention of layers {removed[m]}")
    same = all(removed[m] == removed[modes[0]] for m in modes)
    ratio = seconds["straightforward"] / seconds[modes[3]]
    print(f"identical decisions: {same}")
    print(f"cached over uncached, both batch 1: {seconds['uncached'] / seconds['cached, batch 1']:.2f}x; "
          f"batching the cached search: {seconds['cached, batch 1'] / seconds[modes[3]]:.2f}x")
    print(f"prunebench's stage 2 over the straightforward one: {ratio:.2f}x (target >= {args.min_ratio}x)")
    return 0 if same and ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
