"""Per-review first-order effects of removing attention heads and FFN neurons, from one backward pass per batch.

For review i with logit z_i and label y_i, the margin is m_i = (2 y_i - 1) z_i and the loss l_i = softplus(-m_i)
(binary cross-entropy). A unit u (an attention head: its output o, head_dim wide, the head's slice of the
output projection's input; an FFN neuron: its activation a, the output projection's input) takes at token
t the value x_itu. One backward pass of sum_i m_i (weights frozen) gives every dm_i/dx_itu, and per review
and unit, over the review's real tokens,

  S_iu = sum_t x_itu . dm_i/dx_itu            G_iu = sum_t dm_i/dx_itu   (head_dim wide for a head).

What is built on them:
- the mask gradient. A mask m_u = 1 multiplying the unit's output has dm_i/dm_u = S_iu, and the loss's
  dl_i/dm_u = -sigmoid(-m_i) S_iu: Kwon et al.'s (2022) per-example mask gradient, whose empirical Fisher
  sum_i (dl_i/dm_u)^2 is their importance (`gradients.gradient_table` takes it per batch for FFN neurons);
- the attribution of mean-ablating the unit, its output set to a mean mu_u at every token (what the bias
  fold leaves): A_iu = sum_t (mu_u - x_itu) . dm_i/dx_itu = mu_u . G_iu - S_iu, the first-order change of the
  margin m_i (the anatomy's attribution patching, `ablation.Ablator.attribution`, here per review and with
  any means, e.g. the calibration means the fold uses). To first order the changes of a set P of units add
  up, A_i(P) = sum_{u in P} A_iu.

The same pass measures each head's output as written into the residual stream, c_t = o_t W_o[h] (W_o[h]:
the head's rows of the output projection): the sums of ||c_t|| and ||c_t||^2 over real tokens, and the sum
of o_t, from which the head criteria's norm and fluctuation come (`head_criteria`).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..ablation import activation_gradients, retain_activations
from ..adapters import removed_on_exit
from ..batching import progress_batches
from ..device import model_device
from ..models import SentimentClassifier
from .head_compensation import head_output_weights


@dataclass
class ReviewEffects:
    """What one pass over labelled reviews measured (module docstring); per-layer lists of arrays."""

    margins: np.ndarray                  # [N]: (2y - 1) x logit of the unpruned model
    head_s: list[np.ndarray]             # [N, heads]
    head_g: list[np.ndarray]             # [N, heads, head_dim]
    head_sum: list[np.ndarray]           # [heads, head_dim]: sum of the heads' outputs over real tokens
    head_norm_sum: list[np.ndarray]      # [heads]: sum over real tokens of ||o W_o[h]||
    head_sq_sum: list[np.ndarray]        # [heads]: sum over real tokens of ||o W_o[h]||^2
    head_mean_out_sq: list[np.ndarray]   # [heads]: ||mean(o) W_o[h]||^2
    tokens: int
    neuron_s: list[np.ndarray] | None = None   # [N, neurons], float32 (SmolLM2: 46k neurons per review)
    neuron_g: list[np.ndarray] | None = None   # [N, neurons], float32

    @property
    def reviews(self) -> int:
        return len(self.margins)

    def head_means(self) -> list[np.ndarray]:
        """Per layer, each head's mean output over the reviews' real tokens: [heads, head_dim]."""
        return [s / self.tokens for s in self.head_sum]

    def head_attribution(self, means: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per layer [N, heads]: A_ih = mu_h . G_ih - S_ih, the first-order margin change of mean-ablating head h."""
        return [np.einsum("nhd,hd->nh", g, np.asarray(mu, dtype=np.float64)) - s
                for g, s, mu in zip(self.head_g, self.head_s, means)]

    def neuron_attribution(self, means: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per layer [N, neurons]: A_ij = mu_j G_ij - S_ij (the same for FFN neurons)."""
        if self.neuron_s is None:
            raise ValueError("these effects were measured without the FFN neurons (neurons=False)")
        return [g * np.asarray(mu, dtype=np.float64) - s for g, s, mu in zip(self.neuron_g, self.neuron_s, means)]

    def loss_gradient_scale(self) -> np.ndarray:
        """dl_i/dm_i = -sigmoid(-m_i): the mask's loss gradient is this times S_iu."""
        return -1.0 / (1.0 + np.exp(self.margins))


def review_effects(model: SentimentClassifier, encoded: Sequence[Sequence[int]], labels, pad_id: int,
                   padding_side: str = "right", batch_size: int = 8, neurons: bool = True,
                   desc: str | None = None) -> ReviewEffects:
    """Measure `ReviewEffects` on labelled reviews (module docstring), in the model's own dtype (float32 as
    checkpoints load; the tests run float64) with dropout off."""
    if not len(encoded):
        raise ValueError("no reviews given; give at least one labelled review")
    labels = np.asarray(labels)
    if len(labels) != len(encoded):
        raise ValueError(f"{len(labels)} labels for {len(encoded)} reviews")
    model.eval()
    adapter = model.adapter
    L = adapter.num_layers
    device = model_device(model)
    blocks = [adapter.attention(l) for l in range(L)]
    # ||o W_o[h]||^2 = o M_h o with M_h = W_o[h] W_o[h]^T [head_dim, head_dim]: no [tokens, heads, hidden] tensor
    grams = [torch.einsum("hdo,heo->hde", w, w) for w in (head_output_weights(adapter, l).double() for l in range(L))]
    N = len(encoded)
    margins = np.zeros(N)
    head_s = [np.zeros((N, b.heads)) for b in blocks]
    head_g = [np.zeros((N, b.heads, b.head_dim)) for b in blocks]
    head_sum = [torch.zeros(b.heads, b.head_dim, dtype=torch.float64) for b in blocks]
    norm_sum = [torch.zeros(b.heads, dtype=torch.float64) for b in blocks]
    sq_sum = [torch.zeros(b.heads, dtype=torch.float64) for b in blocks]
    widths = adapter.ffn_widths()
    neuron_s = [np.zeros((N, w), dtype=np.float32) for w in widths] if neurons else None
    neuron_g = [np.zeros((N, w), dtype=np.float32) for w in widths] if neurons else None
    tokens = 0
    heads_out: dict[int, torch.Tensor] = {}
    acts: dict[int, torch.Tensor] = {}
    keep_heads = retain_activations(heads_out)
    with activation_gradients(model), \
            removed_on_exit([b.output.register_forward_pre_hook(keep_heads(l)) for l, b in enumerate(blocks)]), \
            adapter.activation_hooks(retain_activations(acts)) if neurons else nullcontext():
        for idx, ids, mask in progress_batches(encoded, batch_size, pad_id, padding_side, desc, device=device):
            sign = torch.as_tensor(2.0 * labels[idx] - 1.0, device=device)
            with torch.enable_grad():
                logits = model(ids, mask)
                margin = sign.to(logits.dtype) * logits
                margin.sum().backward()
            r = mask[..., None].double()  # [B, T, 1]: 1 at real tokens
            margins[idx] = margin.detach().double().cpu().numpy()
            tokens += int(mask.sum())
            with torch.no_grad():
                for l, b in enumerate(blocks):
                    o = heads_out[l].detach().double().view(*mask.shape, b.heads, b.head_dim)
                    g = heads_out[l].grad.double().view_as(o)
                    head_s[l][idx] = ((o * g).sum(-1) * r).sum(1).cpu().numpy()
                    head_g[l][idx] = (g * r[..., None]).sum(1).cpu().numpy()
                    head_sum[l] += (o * r[..., None]).sum((0, 1)).cpu()
                    sq = torch.einsum("bthd,hde,bthe->bth", o, grams[l], o).clamp(min=0)
                    norm_sum[l] += (sq.sqrt() * r).sum((0, 1)).cpu()
                    sq_sum[l] += (sq * r).sum((0, 1)).cpu()
                    if neurons:
                        a, ga = acts[l].detach().double(), acts[l].grad.double()
                        neuron_s[l][idx] = ((a * ga) * r).sum(1).cpu().numpy()
                        neuron_g[l][idx] = (ga * r).sum(1).cpu().numpy()
    means = [s / tokens for s in head_sum]
    mean_out_sq = [torch.einsum("hd,hde,he->h", mu, gm.cpu(), mu).numpy() for mu, gm in zip(means, grams)]
    return ReviewEffects(margins, head_s, head_g, [s.numpy() for s in head_sum], [s.numpy() for s in norm_sum],
                         [s.numpy() for s in sq_sum], mean_out_sq, tokens, neuron_s, neuron_g)
