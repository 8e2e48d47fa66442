"""What each behaviour of the authors' harness changes on a model, measured in one run (docs/reference-harness.md).

    python benchmarks/reference_behaviours.py [--model smollm2-135m] [--windows 20] [--only numerics,...]

For every behaviour that prunebench offers as a setting or option, prune the same model both ways (cpu-quick
calibration amounts, the offline Wikipedia text) and print the decisions that differ and the perplexity of each
result on the first ``--windows`` 256-token windows of the offline evaluation text (exact numerics, the same
dtype as the pruning). The half-precision behaviours are measured in bf16, where they matter; the others in
float32. SliceGPT's two variants have their own script, benchmarks/slicegpt_variants.py.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

SPARSITIES = (0.25, 0.375, 0.5)


def prune(model: str, method: str, sparsity: float, dtype: str, options: dict | None = None,
          numerics: str = "exact", tokenizer: str = "fast", samples: int | None = None, seed: int = 0,
          **calibration: Any):
    from harness import pruning
    from harness.data.tokens import Calibration

    spec = Calibration(source="enwiki-sample", samples=samples, **calibration)
    job = pruning.PruneJob(method=method, sparsity=sparsity, model=model, options=options or {}, profile="cpu-quick",
                           dtype=dtype, device="cpu", calibration=spec, seed=seed, numerics=numerics,
                           tokenizer=tokenizer)
    return pruning.execute(pruning.prepare(job))


def perplexity(outcome, windows: int, tokenizer: Any = None) -> float:
    from harness.data.sources import load_corpus
    from harness.metrics.perplexity import perplexity as score

    tok = tokenizer or outcome.loaded.corpus_tokenizer
    return score(outcome.adapter, tok, load_corpus("enwiki-sample", "evaluation"), 256, windows).value


def row(label: str, a: Any, b: Any, ppl_a: float, ppl_b: float) -> str:
    same = "same" if a == b else f"{a} vs {b}"
    return f"| {label} | {same} | {ppl_a:.2f} | {ppl_b:.2f} | {100 * (ppl_b / ppl_a - 1):+.2f} % |"


HEADER = "| case | decisions (default vs reference) | PPL default | PPL reference | change |\n|---|---|---|---|---|"


def compare(title: str, cases: list[tuple[str, Callable[[], Any], Callable[[], Any], Callable[[Any], Any]]],
            windows: int) -> None:
    print(f"\n### {title}\n\n{HEADER}", flush=True)
    for label, first, second, decisions in cases:
        a, b = first(), second()
        print(row(label, decisions(a.report.decisions), decisions(b.report.decisions), perplexity(a, windows),
                  perplexity(b, windows)), flush=True)


def numerics(model: str, windows: int) -> None:
    def twossp(d):
        return d["removed_attention"]

    def blockpruner(d):
        return [f"{s['kind'][0]}{s['layer']}" for s in d["removed"]]

    def similarity(d):
        return d["removed_layers"]

    cases = []
    for method, pick in (("2ssp", twossp), ("blockpruner", blockpruner), ("shortgpt", similarity),
                         ("window", similarity)):
        for s in SPARSITIES:
            cases.append((f"{method} {s:g}", lambda m=method, s=s: prune(model, m, s, "bfloat16"),
                          lambda m=method, s=s: prune(model, m, s, "bfloat16", numerics="reference"), pick))
    compare("numerics: exact vs reference (bf16)", cases, windows)
    stage1 = []
    for s in SPARSITIES:
        a = prune(model, "2ssp", s, "bfloat16", {"stages": "width"})
        b = prune(model, "2ssp", s, "bfloat16", {"stages": "width"}, numerics="reference")
        stage1.append((s, a.report.plan["kept_width"], perplexity(a, windows), perplexity(b, windows)))
    differing = kept_neurons_differing(model, [row[1] for row in stage1])
    print("\n| 2SSP stage 1 only (bf16) | kept neurons that differ, all layers | PPL exact | PPL reference |\n"
          "|---|---|---|---|")
    for (s, _, pa, pb), count in zip(stage1, differing, strict=True):
        print(f"| {s:g} | {count} | {pa:.2f} | {pb:.2f} |", flush=True)
    from harness.data.sources import load_corpus
    from harness.metrics.perplexity import perplexity as score
    from harness.models import load_model, resolve_model
    from methods.arch import adapt

    dense = load_model(resolve_model(model), dtype="bfloat16", device="cpu")
    corpus = load_corpus("enwiki-sample", "evaluation")
    values = [score(adapt(dense.model), dense.tokenizer, corpus, 256, windows, numerics=n).value
              for n in ("exact", "reference")]
    print(f"\ndense bf16 perplexity on {windows} windows: exact {values[0]:.4f}, reference {values[1]:.4f}")


def kept_neurons_differing(model: str, widths: list[int]) -> list[int]:
    """For each kept width: how many neurons stage 1 keeps in one numerics and not the other (all layers)."""
    from harness.data.sources import load_corpus
    from harness.data.tokens import calibration_samples, tokenize
    from harness.models import load_model, resolve_model
    from methods.arch import adapt
    from methods.base import PruneContext
    from methods.twossp import neuron_scores, top_k

    dense = load_model(resolve_model(model), dtype="bfloat16", device="cpu")
    calib = calibration_samples(tokenize(dense.tokenizer, load_corpus("enwiki-sample", "calibration")), 8, 128)
    adapter = adapt(dense.model)
    scores = {n: neuron_scores(adapter, PruneContext(calib, 0.5, numerics=n), 2) for n in ("exact", "reference")}
    return [sum(len(set(top_k(e, k).tolist()) ^ set(top_k(r, k).tolist())) // 2
                for e, r in zip(scores["exact"], scores["reference"], strict=True)) for k in widths]


def calibration(model: str, windows: int) -> None:
    def evo(d):
        return (d.get("removed_attention"), d.get("removed_ffn"))

    cases = [(f"evopress {s:g}", lambda s=s: prune(model, "evopress", s, "float32"),
              lambda s=s: prune(model, "evopress", s, "float32", construction="per-document"), evo)
             for s in SPARSITIES]
    compare("EvoPress calibration: joined chunks vs per document (8 x 128, float32)", cases, windows)
    cases = []
    for seed in (1, 2):
        cases.append((f"2ssp 0.5 seed {seed}: random-chunks vs shuffle",
                      lambda seed=seed: prune(model, "2ssp", 0.5, "float32", seed=seed, draw="random-chunks"),
                      lambda seed=seed: prune(model, "2ssp", 0.5, "float32", seed=seed, draw="shuffle"),
                      lambda d: d["removed_attention"]))
    compare("calibration draw (2SSP, 8 x 128 calibration)", cases, windows)


def ablations(model: str, windows: int) -> None:
    print("\n### rows vs columns: balanced budget vs the authors' whole budget (float32)\n\n"
          "| sparsity | achieved balanced | achieved whole | PPL balanced | PPL whole |\n|---|---|---|---|---|")
    for s in SPARSITIES:
        a = prune(model, "2ssp", s, "float32", {"scoring": "channels"})
        b = prune(model, "2ssp", s, "float32", {"scoring": "channels", "ffn_budget": "whole"})
        print(f"| {s:g} | {a.report.achieved_sparsity:.4f} | {b.report.achieved_sparsity:.4f} | "
              f"{perplexity(a, windows):.2f} | {perplexity(b, windows):.2f} |", flush=True)
    cases = [(f"window {s:g} (ties first vs last)",
              lambda s=s: prune(model, "window", s, "bfloat16", {"ties": "first"}, numerics="reference"),
              lambda s=s: prune(model, "window", s, "bfloat16", {"ties": "last"}, numerics="reference"),
              lambda d: d["start"]) for s in SPARSITIES]
    compare("window ties, bf16 with reference numerics", cases, windows)


def tokenizer(model: str, windows: int) -> None:
    from harness.data.sources import load_corpus
    from harness.data.tokens import tokenize
    from harness.models import load_model, resolve_model

    fast = load_model(resolve_model(model), dtype="float32", device="cpu")
    slow = load_model(resolve_model(model), dtype="float32", device="cpu", tokenizer="slow")
    print("\n### tokenizer: fast vs slow\n\n| corpus | tokens fast | tokens slow | identical ids | seconds fast | "
          "seconds slow |\n|---|---|---|---|---|---|")
    for role in ("evaluation", "calibration"):
        corpus = load_corpus("enwiki-sample", role)
        times, ids = [], []
        for tok in (fast.corpus_tokenizer, slow.corpus_tokenizer):
            start = time.perf_counter()
            ids.append(tokenize(tok, corpus))
            times.append(time.perf_counter() - start)
        same = ids[0].shape == ids[1].shape and bool((ids[0] == ids[1]).all())
        print(f"| enwiki-sample {role} | {ids[0].numel()} | {ids[1].numel()} | {same} | {times[0]:.1f} | "
              f"{times[1]:.1f} |", flush=True)


SECTIONS = {"numerics": numerics, "calibration": calibration, "ablations": ablations, "tokenizer": tokenizer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=20, help="256-token evaluation windows scored per model")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    args = ap.parse_args()
    import logging

    from harness.logs import quiet_libraries

    logging.basicConfig(level=logging.WARNING)
    quiet_libraries()
    start = time.perf_counter()
    for name in args.only.split(","):
        SECTIONS[name](args.model, args.windows)
    print(f"\n{math.ceil(time.perf_counter() - start)} s in all")


if __name__ == "__main__":
    main()
