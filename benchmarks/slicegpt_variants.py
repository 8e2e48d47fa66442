"""SliceGPT's two variants on the embedded SmolLM2-135M: perplexity after slicing, per dtype and sparsity.

``paper``: function-preserving fusion, PCA orientation; ``reference``: as the 2SSP authors' harness runs
it (embedding rows' means subtracted, norms with eps 1e-5 in the model dtype, random final orientation).
Calibration: the cpu-quick amount, 16 x 128 tokens of enwiki-sample; perplexity: the first windows of
the enwiki-sample evaluation text (prunebench's exact numerics). Prints a markdown table.

    python benchmarks/slicegpt_variants.py [--windows 20] [--seq-len 256] [--dtypes float32 bfloat16]
        [--sparsities 0.25 0.375 0.5] [--variants paper reference] [--seed 0]

``--seed`` only draws the reference's random orientation here (the calibration is the first chunks).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    from harness.data.sources import load_corpus
    from harness.data.tokens import calibration_samples, tokenize
    from harness.metrics.perplexity import perplexity
    from harness.models import load_model, resolve_model
    from methods import get_method
    from methods.arch import adapt
    from methods.base import PruneContext

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--calib-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.375, 0.5])
    ap.add_argument("--variants", nargs="+", default=["paper", "reference"])
    args = ap.parse_args()

    ref = resolve_model("smollm2-135m")
    method = get_method("slicegpt")
    evaluation = load_corpus("enwiki-sample", "evaluation")
    rows: list[tuple[str, str, str, float, float | None]] = []

    def ppl(adapter, tokenizer) -> float:
        return perplexity(adapter, tokenizer, evaluation, seq_len=args.seq_len, max_windows=args.windows).value

    for dtype in args.dtypes:
        loaded = load_model(ref, dtype=dtype, device="cpu")
        calib = calibration_samples(tokenize(loaded.tokenizer, load_corpus("enwiki-sample", "calibration")),
                                    args.samples, args.calib_len)
        rows.append((dtype, "-", "dense", ppl(adapt(loaded.model), loaded.tokenizer), None))
        for s in args.sparsities:
            for variant in args.variants:
                loaded = load_model(ref, dtype=dtype, device="cpu")  # a fresh dense copy for each slicing
                adapter = adapt(loaded.model)
                decisions = method.prune(adapter, method.options({"variant": variant}),
                                         PruneContext(calib, s, args.seed))
                rows.append((dtype, f"{s:g}", variant, ppl(adapter, loaded.tokenizer),
                             decisions["achieved_parameter_sparsity"]))
                print(f"  {dtype} s={s:g} {variant}: {rows[-1][3]:.3f}", file=sys.stderr)

    print(f"SmolLM2-135M, calibration {args.samples} x {args.calib_len} enwiki-sample, perplexity on {args.windows} "
          f"windows x {args.seq_len} tokens of the enwiki-sample evaluation text, seed {args.seed}, CPU\n")
    print("| dtype | slicing fraction | variant | perplexity | parameter sparsity |")
    print("|---|---|---|---|---|")
    for dtype, s, variant, value, sparsity in rows:
        achieved = "-" if sparsity is None else f"{sparsity:.2%}"
        print(f"| {dtype} | {s} | {variant} | {value:.2f} | {achieved} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
