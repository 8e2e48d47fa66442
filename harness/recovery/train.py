"""The LoRA training loop and the merge back into the pruned model.

peft wraps the pruned model's remaining linear layers named by ``target_modules`` (a removed attention or FFN
has none, so nothing is added where the method removed something); only the adapters train. After the last
step the adapters are merged into those layers' weights and unloaded: what is left is the pruned model, same
modules, same shapes, new weights, which saves and reloads as any pruned checkpoint.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import time
from collections.abc import Callable

import torch

from harness.errors import PrunebenchError, first_line
from harness.recovery.config import RecoveryConfig, RecoveryReport
from harness.recovery.data import TrainingText, batches, check_amount, passes
from methods.arch import ModelAdapter

log = logging.getLogger(__name__)

# transformers' scheduler names for the schedules a recovery offers (each with its warm-up).
_SCHEDULER = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}

StepCallback = Callable[[int, int, float], None]  # (step, steps, loss)


def structure(adapter: ModelAdapter) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape: what recovery must leave as it found it."""
    return {name: tuple(p.shape) for name, p in adapter.model.named_parameters()}


def _lora(model: torch.nn.Module, config: RecoveryConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as err:  # no module left to adapt (every targeted one was removed)
        raise PrunebenchError(f"recovery: no linear layer named {', '.join(config.target_modules)} is left in the "
                              f"pruned model ({first_line(err, named=False)[:120]})") from None


def recover(adapter: ModelAdapter, text: TrainingText, config: RecoveryConfig, follows: str,
            on_step: StepCallback | None = None) -> RecoveryReport:
    """Train LoRA adapters on ``text`` for ``config.steps`` optimizer steps, then merge them into ``adapter.model``
    (in place; ``adapter.model`` is the merged model afterwards). Deterministic for a seed on one device."""
    from transformers import get_scheduler

    check_amount(text, config.micro_batch_size)
    before = structure(adapter)
    model = adapter.model
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    torch.manual_seed(config.seed)  # the adapters' initialisation and dropout
    peft_model = _lora(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    modules = sum(1 for name, _ in peft_model.named_modules() if name.endswith(".lora_A"))
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(_SCHEDULER[config.schedule], optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.steps)
    accumulate = config.batch_size // config.micro_batch_size
    stream = batches(text.chunks, config.steps * accumulate, config.micro_batch_size, config.seed)
    curve: list[float] = []
    peft_model.train()
    start = time.perf_counter()
    for step in range(config.steps):
        total = 0.0
        for _ in range(accumulate):
            ids = next(stream).to(device)
            loss = peft_model(input_ids=ids, labels=ids).loss
            (loss / accumulate).backward()
            total += loss.item() / accumulate
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(total):
            raise PrunebenchError(f"recovery diverged: the training loss is {total} at step {step + 1} "
                                  f"(lower the learning rate {config.lr:g})")
        curve.append(total)
        if on_step is not None:
            on_step(step + 1, config.steps, total)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    adapter.model = peft_model.merge_and_unload().eval()
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    if structure(adapter) != before:  # a merge must give back the pruned structure, never another one
        raise PrunebenchError("recovery changed the pruned model's structure; this is a bug in prunebench")
    tokens = config.steps * config.batch_size * config.seq_len
    protocol = {**text.protocol, "passes": round(passes(text, config.steps, config.batch_size), 4)}
    log.info("recovered in %.1f s: loss %.4f -> %.4f over %d steps (%.0f tokens/s)", seconds, curve[0], curve[-1],
             config.steps, tokens / seconds)
    return RecoveryReport(
        settings=config.model_dump(mode="json"), follows=follows, data=protocol, steps=config.steps,
        loss_curve=curve, loss_first=curve[0], loss_last=curve[-1], seconds=seconds, tokens=tokens,
        tokens_per_second=tokens / seconds, trainable_parameters=sum(p.numel() for p in trainable), modules=modules,
        dtype=str(dtype).removeprefix("torch."), device=str(device), peft_version=importlib.metadata.version("peft"),
    )
