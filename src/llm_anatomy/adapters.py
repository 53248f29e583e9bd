"""One interface over the FFN blocks and attention heads of BERT, GPT-2 and Llama backbones.

Every analysis and pruning step talks to a backbone through a `ModelAdapter`, so the
architecture-specific details (Linear vs GPT-2's transposed Conv1D, Llama's gated FFN and
grouped-query attention, where the final norm lives, which token the classifier reads, the last block's
attention for that token alone: `read_token`, which `llm_anatomy.readout` installs) live here, one class per
architecture, and nowhere else (and, for loading outside the project, in `modeling_llm_anatomy`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from . import modeling_llm_anatomy as portable
from .modeling_llm_anatomy import target_positions

KEPT_HEADS = "llm_anatomy_kept_heads"  # attribute of an attention module: the dense model's indices of its heads


@dataclass(frozen=True)
class AttentionBlock:
    """The projections of one layer's attention and where each head sits in them.

    `query`, `key`, `value` are (projection, offset): head h's features are the projection's output
    features offset + h x head_dim ... offset + (h + 1) x head_dim - 1 (GPT-2's three share one fused
    `c_attn` Conv1D at offsets 0, width and 2 x width). `output` maps the heads' concatenated outputs
    (head h: input features h x head_dim ...) to the hidden state. Query head h reads key/value head
    h // group (grouped-query attention; group = 1 for BERT and GPT-2)."""

    module: nn.Module
    query: tuple[nn.Module, int]
    key: tuple[nn.Module, int]
    value: tuple[nn.Module, int]
    output: nn.Module
    head_dim: int
    heads: int
    kv_heads: int

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class FFNBlock:
    """The modules of one FFN. `inputs` map hidden -> neurons, `output` maps neurons -> hidden."""

    inputs: tuple[nn.Module, ...]
    output: nn.Module


def weight_rows_are_neurons(module: nn.Module, side: str) -> bool:
    """Whether a projection's weight indexes neurons along dim 0.

    nn.Linear stores [out, in]; GPT-2's Conv1D stores [in, out]. `side` is "input" for a
    hidden -> neurons projection and "output" for neurons -> hidden."""
    if isinstance(module, Conv1D):
        return side == "output"
    if isinstance(module, nn.Linear):
        return side == "input"
    raise TypeError(f"unsupported FFN projection type {type(module).__name__}")


def neuron_dim(module: nn.Module, side: str) -> int:
    """The weight dimension that indexes a projection's neurons (`side` as in `weight_rows_are_neurons`; for
    attention, "input" indexes a hidden -> heads projection's output features, "output" the heads' inputs)."""
    return 0 if weight_rows_are_neurons(module, side) else 1


@contextmanager
def removed_on_exit(handles) -> Iterator[None]:
    """The hooks behind `handles` (torch RemovableHandles) stay for the `with` block, removed on exit, even on error."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _with_first(block_out, hidden: torch.Tensor):
    """`block_out` (a tensor, or a tuple led by the hidden states) with its hidden states replaced."""
    return (hidden, *block_out[1:]) if isinstance(block_out, tuple) else hidden


def _attend(block, q, k, v, scaling):
    """Softmax attention of one query per row over that row's real tokens (the key mask the readout set on the
    block for this batch), the heads' outputs concatenated: [B, 1, heads x head_dim]."""
    mask = block._readout_key_mask[:, None, None, :].bool()
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=q.shape[1] != k.shape[1])
    return ctx.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _heads(x, head_dim):
    return x.view(x.shape[0], x.shape[1], -1, head_dim).transpose(1, 2)


def _rotate(x, cos, sin):
    """Rotary position embedding, as transformers' `apply_rotary_pos_emb` ([B, heads, T, head_dim])."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class ModelAdapter:
    """Architecture-neutral view of a backbone (a `*Model`, not a `*ForX` wrapper)."""

    arch: str
    is_decoder: bool
    norm_centres: bool = True  # the norms that read the residual stream subtract its mean (LayerNorm)
    # read_token(block, x [B, T, H], rows, positions, kwargs) -> [B, H]: the last block's output at the
    # classifier's token of each row, its keys and values from every token (None: not available)
    read_token = None

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone
        self.config = backbone.config

    # ---- structure -------------------------------------------------------------------
    def layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def ffn(self, layer: int) -> FFNBlock:
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.layers())

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def ffn_width(self, layer: int) -> int:
        out = self.ffn(layer).output
        return out.weight.shape[neuron_dim(out, "output")]

    def ffn_widths(self) -> list[int]:
        return [self.ffn_width(layer) for layer in range(self.num_layers)]

    def value_vectors(self, layer: int) -> torch.Tensor:
        """The output ("value") vector of every neuron of `layer`: [neurons, hidden]."""
        out = self.ffn(layer).output
        weight = out.weight.detach()
        return weight if weight_rows_are_neurons(out, "output") else weight.T

    def input_norm_sq(self, layer: int) -> torch.Tensor:
        """Per neuron, the squared norm of everything that maps the hidden state onto it: [neurons].
        Summed over the input projections (Llama: gate and up rows)."""
        total = None
        for module in self.ffn(layer).inputs:
            w = module.weight.detach().double()
            rows = w if weight_rows_are_neurons(module, "input") else w.T
            sq = (rows ** 2).sum(1)
            total = sq if total is None else total + sq
        return total

    def key_value_weights(self, layer: int) -> int:
        """How many weights map the hidden state onto `layer`'s attention keys and values."""
        block = self.attention(layer)
        return 2 * self.hidden_size * block.kv_heads * block.head_dim

    # ---- attention heads -------------------------------------------------------------------
    def attention(self, layer: int) -> AttentionBlock:
        """`layer`'s attention projections; its head counts read from their shapes (never the config)."""
        raise NotImplementedError

    def head_counts(self) -> list[int]:
        """Query heads per layer."""
        return [self.attention(layer).heads for layer in range(self.num_layers)]

    def kv_head_counts(self) -> list[int]:
        """Key/value heads per layer (the query heads' for BERT and GPT-2)."""
        return [self.attention(layer).kv_heads for layer in range(self.num_layers)]

    def attention_width(self, layer: int) -> int:
        """Query heads x head dimension: the width of `layer`'s attention scores and weighted sums per token."""
        block = self.attention(layer)
        return block.heads * block.head_dim

    def kept_heads(self, layer: int) -> list[int]:
        """The dense model's indices of `layer`'s query heads (all of them until heads are removed)."""
        block = self.attention(layer)
        return list(getattr(block.module, KEPT_HEADS, range(block.heads)))

    def ensure_attention_biases(self) -> None:
        """Give every attention projection a bias (BERT's and GPT-2's always have one)."""

    def residual_site(self, layer: int) -> tuple[nn.Module, int]:
        """(module, argument index): the forward input of `module` at that position is the residual
        stream the FFN's output is added to in `layer` (the attention sublayer's output)."""
        raise NotImplementedError

    @contextmanager
    def activation_hooks(self, make_hook: Callable[[int], Callable]) -> Iterator[None]:
        """Forward pre-hooks `make_hook(layer)` on every FFN output projection, whose input is the
        neurons' activations [batch, seq, neurons]; removed on exit, even on error."""
        with removed_on_exit([self.ffn(l).output.register_forward_pre_hook(make_hook(l)) for l in range(self.num_layers)]):
            yield

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The normalisation the backbone applies after its last layer (identity for BERT)."""
        norm = self.final_norm_module()
        return hidden if norm is None else norm(hidden)

    def final_norm_module(self) -> nn.Module | None:
        """The module applied after the last layer (GPT-2's ln_f, Llama's norm); None for BERT."""
        return None

    def norm_linear_part(self, vectors: torch.Tensor) -> torch.Tensor:
        """A direction written into the residual stream, as the final norm maps it up to the per-token
        scale: the gain times the vector (RMSNorm), the gain times the centred vector (LayerNorm; its
        bias adds the same offset to every token and is left out). Identity for BERT."""
        return vectors

    def ensure_ffn_biases(self) -> None:
        """Give every FFN projection a bias (BERT's and GPT-2's always have one)."""

    def with_ffn_output(self, layer: int, block_out, residual: torch.Tensor, ffn_out: torch.Tensor):
        """What block `layer` returns (same structure as `block_out`) when its FFN output projection yields
        `ffn_out` on the `residual` stream it is added to (the input of `residual_site`): pre-norm blocks
        (GPT-2, Llama) end with that sum, so the block need not run again when only the FFN output changes."""
        return _with_first(block_out, residual + ffn_out)

    # ---- forward -----------------------------------------------------------------------
    def target_positions(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """Index of the token the classifier reads, per row; works for left and right padding.

        Encoders read the first real token (CLS); decoders the last real token."""
        return target_positions(attention_mask, self.is_decoder)

    def forward_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.is_decoder:
            # Position ids from the mask, so a left-padded row sees the same positions as
            # the same text right-padded.
            kwargs["position_ids"] = portable.decoder_position_ids(attention_mask)
            kwargs["use_cache"] = False
        return kwargs

    def hidden_states(self, input_ids, attention_mask) -> tuple[torch.Tensor, ...]:
        """L+1 hidden states [batch, seq, hidden]: embeddings, then each layer's output.

        The last entry is what the backbone returns (after the final norm for decoders)."""
        return self.backbone(**self.forward_kwargs(input_ids, attention_mask), output_hidden_states=True).hidden_states

    def last_hidden_state(self, input_ids, attention_mask) -> torch.Tensor:
        return self.backbone(**self.forward_kwargs(input_ids, attention_mask)).last_hidden_state


class BertAdapter(ModelAdapter):
    arch = "bert"
    is_decoder = False

    def with_ffn_output(self, layer, block_out, residual, ffn_out):
        """Post-norm: the block ends with LayerNorm(FFN output + residual) (dropout is off in eval)."""
        return _with_first(block_out, self.backbone.encoder.layer[layer].output.LayerNorm(ffn_out + residual))

    def layers(self):
        return list(self.backbone.encoder.layer)

    def ffn(self, layer):
        block = self.backbone.encoder.layer[layer]
        return FFNBlock(inputs=(block.intermediate.dense,), output=block.output.dense)

    def residual_site(self, layer):
        return self.backbone.encoder.layer[layer].output, 1  # BertOutput(hidden, input_tensor): LN(dense + input)

    def attention(self, layer):
        block = self.backbone.encoder.layer[layer].attention
        att, d = block.self, block.self.attention_head_size
        heads = att.query.out_features // d
        return AttentionBlock(att, (att.query, 0), (att.key, 0), (att.value, 0), block.output.dense, d, heads, heads)

    @staticmethod
    def read_token(block, x, rows, positions, _kwargs):
        att = block.attention.self
        xt = x[rows, positions][:, None]
        hd = att.attention_head_size
        ctx = _attend(block, _heads(att.query(xt), hd), _heads(att.key(x), hd), _heads(att.value(x), hd), att.scaling)
        a = block.attention.output(ctx, xt)
        return block.output(block.intermediate(a), a)[:, 0]


class GPT2Adapter(ModelAdapter):
    arch = "gpt2"
    is_decoder = True

    def layers(self):
        return list(self.backbone.h)

    def ffn(self, layer):
        mlp = self.backbone.h[layer].mlp
        return FFNBlock(inputs=(mlp.c_fc,), output=mlp.c_proj)

    def residual_site(self, layer):
        return self.backbone.h[layer].ln_2, 0  # residual = hidden; hidden = residual + mlp(ln_2(hidden))

    def attention(self, layer):
        attn = self.backbone.h[layer].attn
        width = attn.c_attn.weight.shape[1] // 3  # Conv1D weight [hidden, query | key | value]
        heads = width // attn.head_dim
        return AttentionBlock(attn, (attn.c_attn, 0), (attn.c_attn, width), (attn.c_attn, 2 * width), attn.c_proj,
                              attn.head_dim, heads, heads)

    def final_norm_module(self):
        return self.backbone.ln_f

    def norm_linear_part(self, vectors):
        centred = vectors - vectors.mean(dim=-1, keepdim=True)
        return centred * self.backbone.ln_f.weight.detach().to(vectors.dtype)

    @staticmethod
    def read_token(block, x, rows, positions, _kwargs):
        attn = block.attn
        xt = x[rows, positions][:, None]
        h = block.ln_1(x)
        width = attn.c_attn.weight.shape[1] // 3  # the kept heads' width (hidden for a dense model)
        # c_attn is a Conv1D (weight [in, 3 x width]): its query columns for the target token only
        q = torch.addmm(attn.c_attn.bias[:width], h[rows, positions], attn.c_attn.weight[:, :width])[:, None]
        kv = torch.addmm(attn.c_attn.bias[width:], h.reshape(-1, h.shape[-1]), attn.c_attn.weight[:, width:])
        k, v = kv.view(*h.shape[:2], 2 * width).split(width, dim=2)
        hd = attn.head_dim
        ctx = _attend(block, _heads(q, hd), _heads(k, hd), _heads(v, hd), attn.scaling)
        a = xt + attn.resid_dropout(attn.c_proj(ctx))
        return (a + block.mlp(block.ln_2(a)))[:, 0]


class LlamaAdapter(ModelAdapter):
    arch = "llama"
    is_decoder = True
    norm_centres = False  # RMSNorm

    def layers(self):
        return list(self.backbone.layers)

    def ffn(self, layer):
        mlp = self.backbone.layers[layer].mlp
        return FFNBlock(inputs=(mlp.gate_proj, mlp.up_proj), output=mlp.down_proj)

    def residual_site(self, layer):
        return self.backbone.layers[layer].post_attention_layernorm, 0  # as GPT-2, with RMSNorm

    def attention(self, layer):
        att = self.backbone.layers[layer].self_attn
        d = att.head_dim
        return AttentionBlock(att, (att.q_proj, 0), (att.k_proj, 0), (att.v_proj, 0), att.o_proj, d,
                              att.q_proj.out_features // d, att.k_proj.out_features // d)

    def final_norm_module(self):
        return self.backbone.norm

    def norm_linear_part(self, vectors):
        return vectors * self.backbone.norm.weight.detach().to(vectors.dtype)

    @staticmethod
    def read_token(block, x, rows, positions, kwargs):
        attn = block.self_attn
        xt = x[rows, positions][:, None]
        h = block.input_layernorm(x)
        hd = attn.head_dim
        q = _heads(attn.q_proj(h[rows, positions][:, None]), hd)
        k, v = _heads(attn.k_proj(h), hd), _heads(attn.v_proj(h), hd)
        cos, sin = kwargs["position_embeddings"]  # [B, T, head_dim]
        q = _rotate(q, cos[rows, positions][:, None], sin[rows, positions][:, None])
        k = _rotate(k, cos, sin)
        a = xt + attn.o_proj(_attend(block, q, k, v, attn.scaling))
        return (a + block.mlp(block.post_attention_layernorm(a)))[:, 0]

    def ensure_ffn_biases(self):
        """Zero biases on gate, up and down projections, and `mlp_bias: true` in the config, so a
        compensated output bias is saved and reloads through the standard LlamaMLP."""
        blocks = map(self.ffn, range(self.num_layers))
        _add_zero_biases(self.config, "mlp_bias", (p for b in blocks for p in (*b.inputs, b.output)))

    def ensure_attention_biases(self):
        """Zero biases on the query, key, value and output projections, and `attention_bias: true` in the
        config (LlamaAttention gives all four a bias or none), so a folded output bias is saved and reloads
        through the standard LlamaAttention."""
        blocks = map(self.attention, range(self.num_layers))
        _add_zero_biases(self.config, "attention_bias", (p for b in blocks for p in (b.query[0], b.key[0], b.value[0], b.output)))


@torch.no_grad()
def _add_zero_biases(config, flag: str, projections: Iterable[nn.Linear]) -> None:
    """Unless the config's `flag` is already true: a zero bias on every one of `projections` without one, and the flag set."""
    if not getattr(config, flag):
        for proj in projections:
            if proj.bias is None:
                proj.bias = nn.Parameter(torch.zeros(proj.out_features, dtype=proj.weight.dtype, device=proj.weight.device),
                                         requires_grad=False)
        setattr(config, flag, True)


ADAPTERS: dict[str, type[ModelAdapter]] = {"bert": BertAdapter, "gpt2": GPT2Adapter, "llama": LlamaAdapter}


def adapter_for(backbone: nn.Module) -> ModelAdapter:
    model_type = backbone.config.model_type
    if model_type not in ADAPTERS:
        raise ValueError(f"no adapter for model_type {model_type!r}; supported: {sorted(ADAPTERS)}. "
                         "Add a ModelAdapter subclass in llm_anatomy/adapters.py.")
    return ADAPTERS[model_type](backbone)
