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
