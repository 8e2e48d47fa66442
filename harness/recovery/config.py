"""What a recovery runs with, the defaults of each profile and what it reports.

The defaults follow LLM-Pruner's LoRA recovery (its ``post_training.py`` and the run its README gives):
rank 8, alpha 16, dropout 0.05 on all seven projections of a Llama layer, learning rate 1e-4, batch 64 in
micro-batches of 4, 256-token samples, 100 warm-up steps then a linear decay (the Hugging Face Trainer's
default schedule), about 1,550 steps (its two epochs over the ~50k Alpaca examples at batch 64). prunebench
trains on plain text, the profile's calibration source, instead of Alpaca's instructions (docs/recovery.md).
``cpu-quick`` keeps LLM-Pruner's adapter and schedule shape and shortens the rest so that one cell recovers
in a few minutes on 2 CPU cores; its learning rate is the script's own default (3e-4), which a short run needs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from harness.errors import PrunebenchError
from harness.profiles import check_profile
from methods.errors import invalid

Schedule = Literal["linear", "cosine", "constant"]
SCHEDULES: tuple[str, ...] = ("linear", "cosine", "constant")
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RecoveryConfig(BaseModel):
    """One recovery's settings. ``data`` "auto" is the profile's calibration source (its calibration part)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_LINEARS), min_length=1)
    steps: int = Field(1550, ge=1)
    batch_size: int = Field(64, ge=1)  # sequences per optimizer step
    micro_batch_size: int = Field(4, ge=1)  # sequences per forward pass (gradients accumulate over them)
    seq_len: int = Field(256, ge=2)
    lr: float = Field(1e-4, gt=0)
    schedule: Schedule = "linear"
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    data: str = "auto"
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fits(self):
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError("target_modules names a module twice")
        return self


# What each profile's defaults follow, recorded with every recovery.
FOLLOWS = {
    "paper": "LLM-Pruner's LoRA recovery (post_training.py; r 8, alpha 16, lr 1e-4, batch 64, 2 epochs of Alpaca)",
    "cpu-quick": "LLM-Pruner's LoRA recovery, shortened for 2 CPU cores (its adapter and schedule shape; lr 3e-4, "
                 "the script's default; 60 steps of 4 x 128 tokens)",
}
_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu-quick": {"steps": 60, "batch_size": 4, "micro_batch_size": 4, "seq_len": 128, "lr": 3e-4,
                  "warmup_steps": 6},
}


def one_line(err: ValidationError, where: str) -> PrunebenchError:
    """pydantic's first complaint as prunebench's one line."""
    loc, message = invalid(err)
    return PrunebenchError(f"{'.'.join(p for p in (where, loc) if p)}: {message}")


def recovery_config(profile: str, overrides: dict[str, JsonValue] | None = None,
                    where: str = "bench setting 'recovery'") -> RecoveryConfig:
    """The profile's defaults with ``overrides`` on top; a bad key or value is one line."""
    try:
        return RecoveryConfig.model_validate({**_PROFILE_DEFAULTS[check_profile(profile)], **(overrides or {})})
    except ValidationError as err:
        raise one_line(err, where) from None


def check_targets(config: RecoveryConfig, model_type: str) -> list[str]:
    """The linear layers a decoder layer of ``model_type`` has; a target outside them is refused (no weights)."""
    from methods.arch import adapter_class

    cls = adapter_class(model_type)
    known = [*cls.attn_in_names, cls.attn_out_name, *cls.ffn_in_names, cls.ffn_out_name]
    unknown = [t for t in config.target_modules if t not in known]
    if unknown:
        raise PrunebenchError(f"recovery target module {unknown[0]!r} is not a linear layer of a {model_type} "
                              f"decoder layer; choose among {', '.join(known)}")
    return known


class RecoveryReport(BaseModel):
    """One recovery: its settings, the text it trained on, its loss curve and its cost."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, JsonValue]
    follows: str
    data: dict[str, JsonValue]  # the training text's protocol (harness.recovery.data)
    steps: int
    loss_curve: list[float]  # mean training loss of each optimizer step
    loss_first: float
    loss_last: float
    seconds: float
    tokens: int  # tokens trained on (every step's batch)
    tokens_per_second: float
    trainable_parameters: int
    modules: int  # linear layers that got an adapter
    dtype: str
    device: str
    peft_version: str
    from_cache: bool = False
    cache_key: str | None = None
