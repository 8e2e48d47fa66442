"""BlockPruner's greedy search on the default model, three ways, same sample, same decisions required.

- straightforward: every candidate through the model's own forward (full logits) and its loss, as a
  plain implementation computes perplexity;
- naive: every candidate through the decoder stack from the embeddings, one at a time, with
  prunebench's bounded-memory head (``PerplexityProbe(cached=False)``);
- cached: resume each candidate from the cached hidden state entering its layer, candidates run
  through their remaining layers together (``PerplexityProbe(batch=B)``), full LM head for each;
- prunebench (what ``prunebench prune`` runs): cached, and the full LM head only for candidates that
  a lower bound on a slice of the vocabulary does not prove worse (``screen=screen_vocab``).

The four run in lockstep, one greedy step at a time, so that load on a shared machine hits all of
them alike. By default only the first --max-steps 4 greedy steps of the search run (each step scores
every remaining candidate, so the ratio of a step is that of the whole search; the whole alternating
search at 25 % is 16 steps, 424 candidates, over ten minutes on 2 cores); --max-steps 0 runs it all. \
Prints wall times, the removal sequences and the speed ratios; exits 1 if the decisions
differ (kind and layer of every step for all four, and the perplexities bit for bit between naive,
cached and prunebench) or if prunebench's search is not at least --min-ratio times faster than the
straightforward one.

    python benchmarks/blockpruner_search.py [--form alternating|free|block] [--sparsity 0.25] [--seq-len 256]
                                            [--max-steps 4]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time

import torch
import torch.nn.functional as F


class Straightforward:
    """A scorer with the search's interface: full model forward and full logits for every candidate."""

    def __init__(self, adapter, sample: torch.Tensor):
        self.adapter = adapter
        self.ids = sample[None]

    @torch.no_grad()
    def best(self, candidates, rank) -> tuple[int, float]:
        scores = []
        for c in candidates:
            with self.adapter.without(**c.removal()):
                logits = self.adapter.model(input_ids=self.ids, use_cache=False).logits
                scores.append(math.exp(F.cross_entropy(logits[0, :-1].float(), self.ids[0, 1:]).item()))
        k = min(range(len(candidates)), key=lambda k: rank(k, scores[k]))
        return k, scores[k]

    def committed(self, layer: int) -> None:  # nothing cached
        pass

    def layer_deleted(self) -> None:
        pass


def main() -> int:
    from harness.data.sources import load_corpus
    from harness.data.tokens import calibration_samples, tokenize
    from harness.models import load_model, resolve_model
    from methods import get_method
    from methods.arch import adapt
    from methods.blockpruner import GreedySearch
    from methods.search import PerplexityProbe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--form", choices=["alternating", "free", "block"], default="alternating")
    ap.add_argument("--sparsity", type=float, default=0.25)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-steps", type=int, default=4, help="greedy steps to run (0: the whole search)")
    ap.add_argument("--batch", type=int, default=8, help="candidates per batch in the cached search")
    ap.add_argument("--min-ratio", type=float, default=1.0, help="required speed-up of cached over straightforward")
    args = ap.parse_args()
    torch.manual_seed(0)

    loaded = load_model(resolve_model("smollm2-135m"), dtype="float32", device="cpu")
    tokens = tokenize(loaded.tokenizer, load_corpus("enwiki-sample", "calibration"))
    sample = calibration_samples(tokens, 1, args.seq_len)  # the first chunk: the same sample for all three
    dense = adapt(loaded.model)
    if args.form == "block":
        method = get_method("blockpruner-block")
        plan = method.plan(dense, args.sparsity, method.options())
        limits = {"rounds": plan["blocks"]}
    else:
        method = get_method("blockpruner")
        plan = method.plan(dense, args.sparsity, method.options({"mode": args.form}))
        limits = {"rounds": plan["rounds"]} if args.form == "alternating" else {"target": plan["target_parameters"]}
    whole = {"alternating": lambda: 2 * plan["rounds"], "block": lambda: plan["blocks"],
             "free": lambda: f"{plan['min_steps']}-{plan['max_steps']}"}[args.form]()
    print(f"SmolLM2-135M, BlockPruner {args.form} at sparsity {args.sparsity}: plan {plan}; perplexity on "
          f"1 x {args.seq_len} tokens; the search has {whole} steps, running "
          f"{'all' if args.max_steps <= 0 else f'the first {args.max_steps}'}")

    modes = ["straightforward", "naive", f"cached, batch {args.batch}", "prunebench"]
    adapters = {m: adapt(copy.deepcopy(loaded.model)) for m in modes}
    seconds = dict.fromkeys(modes, 0.0)
    candidates = dict.fromkeys(modes, 0)
    searches = {}
    for m in modes:  # building the scorer (the cached one traces the sample) counts as search time
        start = time.perf_counter()
        a = adapters[m]
        if m == "straightforward":
            scorer = Straightforward(a, sample[0])
        else:
            screen = method.options().screen_vocab if m == "prunebench" else 0.0
            scorer = PerplexityProbe(a, sample, cached=m != "naive", batch=args.batch, screen=screen)
        searches[m] = GreedySearch(a, scorer, args.form, **limits)
        seconds[m] += time.perf_counter() - start

    def running(m: str) -> bool:
        return not searches[m].done() and (args.max_steps <= 0 or len(searches[m].steps) < args.max_steps)

    while any(running(m) for m in modes):
        for m in modes:
            if not running(m):
                continue
            candidates[m] += len(searches[m].candidates())
            start = time.perf_counter()
            searches[m].step()
            seconds[m] += time.perf_counter() - start

    for m in modes:
        seq = " ".join(f"{s.kind[0]}{s.layer}" for s in searches[m].steps)
        print(f"{m:18s} {seconds[m]:8.2f} s  {candidates[m]:4d} candidates  removed: {seq}")
    return report(searches, seconds, modes, args.min_ratio)


def report(searches, seconds, modes, min_ratio: float) -> int:
    straight, *probed = (searches[m].steps for m in modes)
    ours = probed[-1]
    same_choice = all([(s.kind, s.layer) for s in steps] == [(s.kind, s.layer) for s in ours]
                      for steps in (straight, *probed))
    same_ppl = all([s.perplexity for s in steps] == [s.perplexity for s in ours] for steps in probed)
    drift = max((abs(a.perplexity / b.perplexity - 1) for a, b in zip(straight, ours, strict=False)), default=0.0)
    print(f"identical choices (all four): {same_choice}; naive, cached and prunebench perplexities bit for bit: "
          f"{same_ppl}; straightforward's perplexities within {drift:.1e} (float32 mean loss vs float64 summed NLL)")
    print(f"perplexity after each step: {[round(s.perplexity, 3) for s in ours]}")
    print(f"full LM head for {searches['prunebench'].scorer.exact_evaluations} candidates in prunebench's search")
    ratio = seconds[modes[0]] / seconds["prunebench"]
    print(f"cached over naive: {seconds[modes[1]] / seconds[modes[2]]:.2f}x; cached over straightforward: "
          f"{seconds[modes[0]] / seconds[modes[2]]:.2f}x; "
          f"the bound on top of caching: {seconds[modes[2]] / seconds['prunebench']:.2f}x; "
          f"prunebench over straightforward: {ratio:.2f}x (required >= {min_ratio}x)")
    return 0 if same_choice and same_ppl and ratio >= min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
