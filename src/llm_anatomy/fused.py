"""Inference on CPU with oneDNN's fused linear + bias + activation for each FFN's input map, as
`inference.inference_model` runs every prediction (docs/SPEED.md).

Eager PyTorch runs an FFN's input map as `addmm` (which first copies the bias into its output) and
then the activation as a separate pass over the [tokens, FFN] tensor; on an AMX CPU those two
non-matmul passes cost more than the matmul. `torch.ops.mkldnn._linear_pointwise` (the kernel
inductor emits under freezing) applies bias and activation inside the matmul. Measured on MiniLM's
384 -> 1536 + GELU at 8,192 rows, bf16: 16.2 ms eager, 6.3 ms fused (benchmarks/fused_linear.py).
Llama's gated FFN also multiplies the up projection by the activated gate inside the up map's kernel
(a binary post-op), so no pass over the [tokens, FFN] tensor is left outside a matmul.
"""
from __future__ import annotations

import types

import torch
from torch import nn

# transformers' activation name -> (oneDNN post-op, its algorithm)
ACTIVATIONS = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"), "gelu_pytorch_tanh": ("gelu", "tanh"),
               "silu": ("swish", ""), "swish": ("swish", "")}


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def is_fused(model: nn.Module) -> bool:
    return any(isinstance(m, FusedLinear) for m in model.modules())


class FusedLinear(nn.Module):
    """A linear map whose oneDNN kernel also applies what follows it; weight [out, in] as nn.Linear holds
    it (so the roofline counts it as the map it replaced)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().contiguous(), requires_grad=False)


class FusedLinearAct(FusedLinear):
    """activation(x @ weight.T + bias) in one oneDNN call."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activation: str):
        super().__init__(weight, bias)
        self.attr, self.algorithm = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.weight, self.bias, self.attr, [],
                                               self.algorithm)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class FusedLinearMul(FusedLinear):
    """(x @ weight.T + bias) * other in one oneDNN call: Llama's up projection times the activated gate."""

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise.binary(x.reshape(-1, x.shape[-1]), other.reshape(-1, other.shape[-1]),
                                                      self.weight, self.bias, "mul")
        return y.reshape(*x.shape[:-1], y.shape[-1])


def _gated_mlp_forward(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LlamaMLP's down(act(gate(x)) * up(x)), with the activation and the product inside the two input maps."""
    return mlp.down_proj(mlp.up_proj(x, mlp.gate_proj(x)))


def fuse_ffn_inputs(model) -> int:
    """Swap each FFN's input map + activation for a FusedLinearAct (Llama: also its up map and the product
    with the gate for a FusedLinearMul), in place; returns how many FFNs were
    swapped (0 where the architecture or activation is not covered: the model is then left as is)."""
    adapter, config = model.adapter, model.backbone.config
    swapped = 0
    for block in adapter.layers():
        if adapter.arch == "bert" and config.hidden_act in ACTIVATIONS:
            dense = block.intermediate.dense  # the same attribute path, so the adapter still finds the map
            block.intermediate.dense = FusedLinearAct(dense.weight, dense.bias, config.hidden_act)
            block.intermediate.intermediate_act_fn = nn.Identity()
        elif adapter.arch == "gpt2" and config.activation_function in ACTIVATIONS:
            c_fc = block.mlp.c_fc  # Conv1D: weight [in, out]
            block.mlp.c_fc = FusedLinearAct(c_fc.weight.t(), c_fc.bias, config.activation_function)
            block.mlp.act = nn.Identity()
        elif adapter.arch == "llama" and config.hidden_act in ACTIVATIONS:
            mlp = block.mlp
            mlp.gate_proj = FusedLinearAct(mlp.gate_proj.weight, mlp.gate_proj.bias, config.hidden_act)
            mlp.up_proj = FusedLinearMul(mlp.up_proj.weight, mlp.up_proj.bias)
            mlp.act_fn = nn.Identity()
            mlp.forward = types.MethodType(_gated_mlp_forward, mlp)  # a method, so a deepcopy rebinds it
        else:
            return swapped
        swapped += 1
    return swapped
