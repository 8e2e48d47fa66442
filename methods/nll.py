"""Next-token negative log-likelihood from final hidden states.

Two numerics (``methods.base.Numerics``, docs/reference-harness.md):

- ``exact`` (:func:`summed_nll`): logits cast to float32, summed in float64. Full logits of a 2048-token
  window over a large vocabulary are big (Qwen-2.5: 2048 x 152k floats), so the head is applied a chunk
  of positions at a time and only the summed loss is kept.
- ``reference`` (:func:`reference_window_loss`, :class:`ReferenceMean`): as the 2SSP authors' harness
  computes perplexity: the logits of the whole window stay in the model's dtype, ``cross_entropy``
  takes their mean in that dtype, windows are combined by the running mean ``a * loss + b * running``
  in that dtype, and ``exp`` is taken in it too. In bf16 many candidates of a search then share one
  perplexity, and the lowest layer index wins, as the authors' strict ``<`` does.
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


@torch.no_grad()
def reference_window_loss(adapter: ModelAdapter, normed_hidden: torch.Tensor, input_ids: torch.Tensor,
                          first: int = 0) -> torch.Tensor:
    """The mean next-token cross entropy of one window, computed as the authors' harness does it.

    One ``cross_entropy`` over the whole window's logits, left in the model's dtype (no upcast, no
    chunking: either would change the rounding being reproduced). Returns a 0-dim tensor of that dtype.
    ``first`` skips context-only positions (a prepended BOS), as in :func:`summed_nll`.
    """
    logits = adapter.logits(normed_hidden[:, first:-1])
    targets = input_ids[:, first + 1 :].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class ReferenceMean:
    """The running token-weighted mean of window losses, kept as the authors' loop keeps it.

    ``running = a * loss + b * running`` with Python-float weights ``a = n / (seen + n)``, ``b = seen / (seen
    + n)``, starting from the integer 0: the result stays in the losses' dtype, and so does ``exp``.
    """

    def __init__(self) -> None:
        self.running: torch.Tensor | int = 0
        self.tokens = 0

    def add(self, loss: torch.Tensor, targets: int) -> None:
        a = targets / (self.tokens + targets)
        b = self.tokens / (self.tokens + targets)
        self.running = a * loss + b * self.running
        self.tokens += targets

    def loss(self) -> float:
        """The running mean loss, as a Python float of the dtype's value."""
        if isinstance(self.running, int):
            raise ValueError("no window was added")
        return float(self.running.item())

    def perplexity(self) -> float:
        if isinstance(self.running, int):
            raise ValueError("no window was added")
        return float(self.running.exp().item())
