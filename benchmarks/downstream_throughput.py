"""The downstream evaluator against bare batched forward passes over the same token sequences, on the default model.

The requests are a paper task's own (lm-eval's prompts and choices, the package's rows; hellaswag by default):
every (context, continuation) pair becomes the sequence lm-eval feeds the model, batched longest first and right
padded as lm-eval does. Timed on those same batches, alternating round by round so that machine load hits all
alike:

- bare: ``model(input_ids).logits`` for every batch, nothing else;
- evaluator: prunebench's scorer (harness.metrics.tasks.hflm), which returns every request's log-likelihood. It runs
  the prefix that a question's choices share once (a row of the prefix and every choice's tokens, under a mask),
  so it forwards fewer tokens than bare and its ratio can exceed 1;
- lm-eval: lm-eval's own HFLM scorer on the same requests, for reference;
- metric: the whole downstream metric on the same documents (task loading, lm-eval's bookkeeping, outcomes).

Prints tokens/s of each (tokens of lm-eval's sequences, padding excluded, whatever each one forwards) and each
one's ratio to bare, the tokens the evaluator forwards, and how far its log-likelihoods are from lm-eval's.
Exits 1 if the evaluator is below --min-ratio of bare.

    python benchmarks/downstream_throughput.py [--model smollm2-135m] [--task hellaswag] [--docs 48] [--rounds 3]
        [--batch-size 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch


def main() -> int:
    from lm_eval.models.huggingface import HFLM

    from harness.metrics.tasks import driver
    from harness.models import load_model, resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="an embedded name, hub id or local directory")
    ap.add_argument("--task", default="hellaswag")
    ap.add_argument("--docs", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--min-ratio", type=float, default=0.8)
    args = ap.parse_args()

    loaded = load_model(resolve_model(args.model), dtype="auto", device="auto")
    model, device = loaded.model, loaded.device
    lm = driver._wrap_model(model, loaded.tokenizer, args.batch_size)
    task = driver._load(driver._task_manager([]), args.task, "package")
    requests = _requests(lm, task.tasks, args.docs)
    inputs = sorted({tuple((c + k)[-(lm.max_length + 1):][:-1]) for _, c, k in requests}, key=lambda t: (-len(t), t))
    batches = [_padded(inputs[i:i + args.batch_size]) for i in range(0, len(inputs), args.batch_size)]
    tokens = sum(len(t) for t in inputs)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.inference_mode()
    def bare() -> None:
        for batch in batches:
            model(input_ids=batch.to(device), use_cache=False).logits  # noqa: B018

    def evaluator() -> list[tuple[float, bool]]:
        return lm._loglikelihood_tokens(requests, disable_tqdm=True)

    def lm_eval() -> list[tuple[float, bool]]:
        return HFLM._loglikelihood_tokens(lm, requests, disable_tqdm=True)

    def metric() -> None:
        driver.run_downstream(model, loaded.tokenizer, [args.task], limit=args.docs, batch_size=args.batch_size)

    runs = {"bare": bare, "evaluator": evaluator, "lm-eval": lm_eval, "metric": metric}
    mine, theirs = evaluator(), lm_eval()  # warm-up, and the agreement check
    seconds = dict.fromkeys(runs, 0.0)
    for _ in range(args.rounds):
        for name, fn in runs.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            seconds[name] += time.perf_counter() - start
    rate = {name: args.rounds * tokens / s for name, s in seconds.items()}
    print(f"{args.task}: {args.docs} documents, {len(requests)} requests, {len(inputs)} distinct inputs, "
          f"{tokens} input tokens, batch {args.batch_size}, {args.rounds} rounds, {device.type}, "
          f"{torch.get_num_threads()} threads")
    for name in runs:
        print(f"{name:>9}: {rate[name]:9.0f} tokens/s  {rate[name] / rate['bare']:.3f}x bare")
    rows = lm.rows(requests)
    print(f"evaluator forwards {sum(len(r) for r in rows)} tokens in {len(rows)} rows "
          f"({sum(r.packed for r in rows)} of them shared by several choices)")
    diff = max(abs(a[0] - b[0]) for a, b in zip(mine, theirs, strict=True))
    greedy = sum(a[1] != b[1] for a, b in zip(mine, theirs, strict=True))
    print(f"evaluator vs lm-eval: max |log-likelihood difference| {diff:.2e}, greedy flags differing: {greedy}")
    ratio = rate["evaluator"] / rate["bare"]
    if ratio < args.min_ratio:
        print(f"FAIL: evaluator at {ratio:.3f}x bare, below {args.min_ratio}")
        return 1
    return 0


def _requests(lm: Any, tasks: list[Any], docs: int) -> list[tuple[tuple[str, str], list[int], list[int]]]:
    """The task's loglikelihood requests for its first ``docs`` documents, tokenised as lm-eval does."""
    out = []
    for task in tasks:
        task.build_all_requests(limit=docs, rank=0, world_size=1)
        for instance in task.instances:
            context, continuation = instance.args
            out.append(((context, continuation), *lm._encode_pair(context, continuation)))
    return out


def _padded(inputs: list[tuple[int, ...]]) -> torch.Tensor:
    batch = torch.zeros(len(inputs), len(inputs[0]), dtype=torch.long)
    for row, inp in enumerate(inputs):
        batch[row, :len(inp)] = torch.tensor(inp)
    return batch


if __name__ == "__main__":
    sys.exit(main())
