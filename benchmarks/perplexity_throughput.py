"""The perplexity evaluator against bare forward passes over the same windows, on the default model.

bare: ``model(input_ids).logits`` for every window, nothing else (the least a perplexity can cost);
evaluator: prunebench's ``score_windows`` (decoder stack, bounded-memory head, cross entropy).
The two alternate window by window, several rounds, so that machine load hits both alike. Prints
tokens/s of each and the ratio; exits 1 if the evaluator is below --min-ratio of bare throughput.

    python benchmarks/perplexity_throughput.py [--seq-len 512] [--windows 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main() -> int:
    from harness.data.sources import load_corpus
    from harness.data.tokens import eval_windows, tokenize
    from harness.metrics.perplexity import score_windows
    from harness.models import load_model, resolve_model
    from methods.arch import adapt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-ratio", type=float, default=0.95)
    args = ap.parse_args()

    loaded = load_model(resolve_model("smollm2-135m"), dtype="auto", device="auto")
    adapter = adapt(loaded.model)
    windows = eval_windows(tokenize(loaded.tokenizer, load_corpus("enwiki-sample", "evaluation")),
                           args.seq_len, args.windows)
    device = loaded.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.inference_mode()
    def bare(window: torch.Tensor) -> None:
        loaded.model(input_ids=window[None].to(device), use_cache=False).logits  # noqa: B018

    def evaluator(window: torch.Tensor) -> None:
        score_windows(adapter, window[None])

    for w in windows[:1]:  # warm-up
        bare(w)
        evaluator(w)
    seconds = {"bare": 0.0, "evaluator": 0.0}
    for _ in range(args.rounds):
        for w in windows:
            for name, fn in (("bare", bare), ("evaluator", evaluator)):
                sync()
                start = time.perf_counter()
                fn(w)
                sync()
                seconds[name] += time.perf_counter() - start
    tokens = args.rounds * windows.numel()
    for name, s in seconds.items():
        print(f"{name:10s} {tokens / s:10.0f} tokens/s  ({s:.2f} s for {tokens} tokens)")
    ratio = seconds["bare"] / seconds["evaluator"]
    print(f"evaluator throughput / bare forward throughput: {ratio:.3f} (target >= {args.min_ratio}) on {device}, "
          f"{args.windows} windows x {args.seq_len} tokens, {args.rounds} rounds")
    return 0 if ratio >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
