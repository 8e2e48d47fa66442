"""Next-token negative log-likelihood from final hidden states, in bounded memory.

Full logits of a 2048-token window over a large vocabulary are big (Qwen-2.5: 2048 x 152k floats);
the head is applied a chunk of positions at a time and only the summed loss is kept.
"""

import torch
import torch.nn.functional as F

from methods.arch import ModelAdapter


@torch.no_grad()
def summed_nll(
    adapter: ModelAdapter, normed_hidden: torch.Tensor, input_ids: torch.Tensor, first: int = 0, chunk: int = 512
) -> tuple[float, int]:
    """Sum of cross entropies of ``input_ids[:, first+1:]`` predicted from the positions before them.

    ``normed_hidden`` is the output of the final norm, shape [batch, tokens, hidden]. ``first`` skips
    positions that are context only (a prepended BOS). Returns (sum in float64, number of targets).
    """
    total = torch.zeros((), dtype=torch.float64, device=normed_hidden.device)
    last = input_ids.shape[1] - 1
    for start in range(first, last, chunk):
        stop = min(start + chunk, last)
        logits = adapter.logits(normed_hidden[:, start:stop]).float()
        targets = input_ids[:, start + 1 : stop + 1].to(logits.device)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").double()
    return float(total), (last - first) * input_ids.shape[0]


class VocabularyScreen:
    """A lower bound on the summed NLL from the logits of part of the vocabulary only.

    For any subset S of the vocabulary that holds the target, log-sum-exp over S is at most the one
    over the whole vocabulary, so ``LSE_S(z) - z_target`` can only underestimate the cross entropy.
    A greedy search uses it to skip the full head for candidates the bound already proves worse than
    the best one found (see :meth:`methods.search.PerplexityProbe.best`). S is the targets plus the
    tokens to which ``reference`` (the unpruned-so-far model's final states) gives the most
    probability mass over the sample, ``fraction`` of the vocabulary in all: candidates' predictions
    stay close to the reference's, so S holds most of their mass and the bound is tight.
    """

    def __init__(self, adapter: ModelAdapter, reference: torch.Tensor, input_ids: torch.Tensor, fraction: float,
                 chunk: int = 512):
        head = adapter.lm_head()
        last = input_ids.shape[1] - 1
        mass = torch.zeros(head.out_features, dtype=torch.float32, device=reference.device)
        for start in range(0, last, chunk):
            logits = adapter.logits(reference[:, start : min(start + chunk, last)]).float()
            mass += logits.softmax(-1).sum(dim=(0, 1))
        targets = input_ids[:, 1:].to(reference.device)
        top = mass.topk(max(1, int(fraction * head.out_features))).indices
        rows = torch.unique(torch.cat([top, targets.flatten()]))  # sorted
        self.head = torch.nn.Linear(head.in_features, len(rows), bias=head.bias is not None)
        self.head.to(device=head.weight.device, dtype=head.weight.dtype)
        with torch.no_grad():
            self.head.weight.copy_(head.weight[rows])
            if head.bias is not None:
                self.head.bias.copy_(head.bias[rows])
        self.targets = torch.searchsorted(rows, targets)  # where each target sits in the subset
        self.adapter, self.size, self.chunk = adapter, len(rows), chunk

    @torch.no_grad()
    def lower_bound(self, normed_hidden: torch.Tensor) -> float:
        """At most ``summed_nll(adapter, normed_hidden, input_ids)[0]`` (up to float rounding)."""
        total = torch.zeros((), dtype=torch.float64, device=normed_hidden.device)
        last = self.targets.shape[1]
        for start in range(0, last, self.chunk):
            stop = min(start + self.chunk, last)
            logits = self.adapter.logits(normed_hidden[:, start:stop], head=self.head).float()
            target = logits.gather(-1, self.targets[:, start:stop, None])[..., 0]
            total += (torch.logsumexp(logits, -1) - target).sum().double()
        return float(total)
