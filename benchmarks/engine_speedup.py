"""llama.cpp decode speed-ups of pruned models against the ideal ones, on the default model, in one run.

For 2SSP, BlockPruner and ShortGPT at 25, 37.5 and 50 % (the cpu-quick profile's bench cells, pruned through
harness.pruning or taken from the prune cache, which `make bench` shares), each model is exported to GGUF
(harness.export) and decoded greedily in llama.cpp (harness.engine). The measured speed-up is pruned over
dense tokens/s, with a bootstrap interval over the repeats of both; the ideal one is the ratio of
multiply-adds per decoded token, dense over pruned (see ``decode_macs``). The dense engine stays loaded
and alternates with each pruned one repeat by repeat, so that load on a shared machine hits both alike.
Prints the table; exits 0 (there is no target: the gap to the ideal is what it shows).

    python benchmarks/engine_speedup.py [--dtype f16] [--threads N] [--prompt 64] [--decode-tokens 64] [--repeats 10]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

METHODS = ("2ssp", "blockpruner", "shortgpt")
SPARSITIES = (0.25, 0.375, 0.5)


def decode_macs(adapter, context: float) -> float:
    """Multiply-adds of one decoded token with ``context`` tokens in the KV cache (its own included).

    Counted from the model's structure: per layer with attention, the Q, K, V and output projections
    (d x heads x head_dim, twice d x kv_heads x head_dim, heads x head_dim x d) and the score and value
    products over the cache (2 x heads x head_dim x context); per layer with an FFN, gate, up and down
    (3 x d x width); the LM head (d x vocabulary). The score and value products are included because
    removing an attention module removes them too; they grow with the context, so the count is taken at
    the mean context of the timed steps (linear in the context, so it is the mean over the steps exactly).
    Norms, RoPE, softmax and SiLU are a few operations per element of a d-vector, not matrix
    multiply-adds, and the embedding is a lookup: all left out.
    """
    from harness.export.base import structure_of

    config = adapter.config
    d = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    total = float(d * adapter.lm_head().weight.shape[0])
    for layer in structure_of(adapter, adapter.ops).layers:
        if layer.heads:
            total += d * head_dim * (2 * layer.heads + 2 * layer.kv_heads) + 2 * layer.heads * head_dim * context
        total += 3 * d * layer.ffn_width
    return total


def pruned_adapter(spec, ref):
    """The bench cell's pruned model: from the prune cache under the cell's own key, pruned here otherwise."""
    from harness import pruning
    from harness.bench.cell import model_identity, now, prune_job
    from harness.checkpoint import load_pruned, read_manifest, save_pruned
    from harness.devices import device_identity, resolve_device
    from harness.env import capture, fingerprint
    from harness.models import checked_config, resolve_dtype
    from harness.paths import cache_dir
    from harness.prune_cache import PrunedModelCache, code_fingerprint
    from harness.pruning_report import Provenance
    from methods.arch import adapt

    code = code_fingerprint()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device, checked_config(ref).model_type)
    key = spec.prune_key(model_identity(ref), code, dtype=str(dtype).removeprefix("torch."),
                         device=device_identity(device))

    def create(entry: Path) -> None:
        outcome = pruning.execute(pruning.prepare(prune_job(spec)))
        env = capture()
        by = Provenance(cell=f"benchmarks/engine_speedup.py {spec.id}", finished_at=now(), git=env["prunebench"]["git"],
                        hardware=fingerprint(env))
        report = outcome.report.model_copy(update={"pruned_by": by})
        save_pruned(outcome.adapter, outcome.loaded.tokenizer, entry,
                    info={"prune_report": report.model_dump(mode="json"), "cell": spec.id, "cache_key": key,
                          "fingerprint": code})

    entry, _ = PrunedModelCache(cache_dir() / "pruned").obtain(key, create)
    manifest = read_manifest(entry)
    adapter = adapt(load_pruned(entry, dtype=torch.float32, device="cpu"))
    adapter.base_config, adapter.ops = dict(manifest["base_config"]), list(manifest["ops"])  # what an export reads
    return adapter


def main() -> int:
    from tabulate import tabulate

    from harness.bench.config import BenchConfig
    from harness.bench.expand import resolve
    from harness.engine.llamacpp import LlamaCpp, package_version, system_info
    from harness.export import export_model
    from harness.metrics.latency import speedup, summarize
    from harness.models import load_model, resolve_model
    from methods.arch import adapt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="f16", help="GGUF weights: f32, f16 or q8_0")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens before decoding")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)  # progress

    bench = resolve(BenchConfig(methods=list(METHODS), sparsities=list(SPARSITIES), profile="cpu-quick",
                                out=Path(tempfile.gettempdir()) / "unused"))
    ref = resolve_model(bench.cells[0].model)
    dense = load_model(ref, dtype="float32", device="cpu")
    source = {"name": ref.name, "kind": ref.kind, "dtype": "float32", "device": "cpu"}
    prompt = torch.randint(0, dense.model.config.vocab_size, (args.prompt,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    context = args.prompt + (args.decode_tokens + 1) / 2  # steps attend to prompt + 1 ... prompt + n tokens
    n_ctx = args.prompt + args.decode_tokens + 1

    def engine(adapter, name: str, tmp: str) -> LlamaCpp:
        report = export_model(adapter, dense.tokenizer, source, "gguf", Path(tmp) / f"{name}.gguf", args.dtype)
        return LlamaCpp(report.path, args.threads, n_ctx)

    dense_adapter = adapt(dense.model)
    dense_macs = decode_macs(dense_adapter, context)
    rows, dense_rates = [], []
    with tempfile.TemporaryDirectory(prefix="engine-speedup-") as tmp, engine(dense_adapter, "dense", tmp) as base:
        for spec in bench.cells:
            adapter = pruned_adapter(spec, ref)
            ideal = dense_macs / decode_macs(adapter, context)
            with engine(adapter, spec.id, tmp) as pruned:
                for _ in range(args.warmup):
                    base.decode_seconds(prompt, args.decode_tokens)
                    pruned.decode_seconds(prompt, args.decode_tokens)
                rates: dict[str, list[float]] = {"dense": [], "pruned": []}
                for _ in range(args.repeats):  # alternating, so that load hits both alike
                    rates["dense"].append(args.decode_tokens / base.decode_seconds(prompt, args.decode_tokens))
                    rates["pruned"].append(args.decode_tokens / pruned.decode_seconds(prompt, args.decode_tokens))
            (Path(tmp) / f"{spec.id}.gguf").unlink()
            dense_rates += rates["dense"]
            s = speedup(summarize(rates["dense"]), summarize(rates["pruned"]), higher_is_faster=True)
            rows.append([spec.method, f"{100 * spec.sparsity:g} %", f"{ideal:.2f}x",
                         f"{s.value:.2f}x [{s.interval.low:.2f}, {s.interval.high:.2f}]", f"{s.value / ideal:.2f}"])
    print(f"SmolLM2-135M in llama.cpp (llama-cpp-python {package_version()}), GGUF {args.dtype}, "
          f"threads {args.threads}; decode {args.decode_tokens} greedy tokens after a {args.prompt}-token prompt, "
          f"{args.warmup} warm-ups, {args.repeats} repeats alternating with the dense model; dense median "
          f"{summarize(dense_rates).median:.1f} tokens/s")
    print(f"build: {system_info()}")
    print(f"ideal = multiply-adds per decoded token (projections, FFN, LM head, attention over a {context:g}-token "
          "mean context), dense over pruned; measured = pruned over dense tokens/s, 95 % bootstrap interval")
    print(tabulate(rows, ["method", "sparsity", "ideal", "measured [95 % CI]", "measured / ideal"], tablefmt="github",
                   disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
