"""The unpruned model, as a method, so that the bench treats the reference row like every other."""

from typing import Any

from methods.arch import ModelAdapter
from methods.base import CalibrationNeeds, MethodOptions, PruneContext, PruningMethod


class Dense(PruningMethod):
    name = "dense"
    summary = "the unpruned model (reference row)"
    reference = True
    calibration = {"full": CalibrationNeeds(0, 0), "quick": CalibrationNeeds(0, 0)}

    def plan(self, adapter: ModelAdapter, sparsity: float, options: MethodOptions) -> dict[str, Any]:
        return {}

    def prune(self, adapter: ModelAdapter, options: MethodOptions, ctx: PruneContext) -> dict[str, Any]:
        return {}
