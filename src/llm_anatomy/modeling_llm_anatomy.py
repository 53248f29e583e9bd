"""Sentiment classifiers with per-layer FFN widths and attention head counts, loadable with transformers.

This file is written into every folder `llm-anatomy export` makes, next to the weights, and is what
`AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` runs. It imports
torch and transformers only (never llm_anatomy), so the folder works wherever transformers does. The
package uses the same functions (`resize`, `set_head_counts`, `target_positions`,
`decoder_position_ids`) to rebuild its own pruned checkpoints, so both loaders build the same shapes.

One module covers BERT, GPT-2 and Llama: each config and model subclasses the transformers class of
its architecture; the backbone is built from the dense config
and every layer's FFN and attention projections are then resized to the config's `ffn_widths`,
`attention_heads` and `kv_heads` (one entry per layer). The head is llm-anatomy's: dropout ->
dense(hidden, 1) on the token the classifier reads (encoders: the first real token, CLS; decoders:
the last real token, with position ids counted from the attention mask so that left and right
padding give the same logits). `logits` has shape [batch, 1]: the log-odds of a positive review
(transformers' convention for `num_labels = 1`).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, GPT2Config, LlamaConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BertModel, BertPreTrainedModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Model, GPT2PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaModel, LlamaPreTrainedModel
from transformers.pytorch_utils import Conv1D


def target_positions(attention_mask: torch.Tensor, is_decoder: bool) -> torch.Tensor:
    """Per row, the first real token (encoders: CLS) or the last real token (decoders)."""
    mask = attention_mask.long()
    if is_decoder:
        return mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)
    return mask.argmax(dim=1)


def decoder_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees those of the same text right-padded."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


# ---- per-layer shapes --------------------------------------------------------------------------------
def _layers(backbone: nn.Module, arch: str) -> list[nn.Module]:
    return list({"bert": lambda b: b.encoder.layer, "gpt2": lambda b: b.h, "llama": lambda b: b.layers}[arch](backbone))


def _new_like(old: nn.Module, n_in: int, n_out: int) -> nn.Module:
    """An empty projection of the type, dtype, device and bias presence of `old`, mapping n_in -> n_out."""
    if isinstance(old, Conv1D):
        new = Conv1D(n_out, n_in)  # weight [in, out]
        if old.bias is None:
            new.bias = None
    else:
        new = nn.Linear(n_in, n_out, bias=old.bias is not None, device=old.weight.device)
    return new.to(device=old.weight.device, dtype=old.weight.dtype)


def _shape(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear or Conv1D."""
    w = module.weight
    return (w.shape[0], w.shape[1]) if isinstance(module, Conv1D) else (w.shape[1], w.shape[0])


def _resized(parent: nn.Module, name: str, n_in: int, n_out: int) -> None:
    old = getattr(parent, name)
    if _shape(old) != (n_in, n_out):
        setattr(parent, name, _new_like(old, n_in, n_out))


def attention_module(layer: nn.Module, arch: str) -> nn.Module:
    return {"bert": lambda b: b.attention.self, "gpt2": lambda b: b.attn, "llama": lambda b: b.self_attn}[arch](layer)


def head_dim(layer: nn.Module, arch: str) -> int:
    attn = attention_module(layer, arch)
    return attn.attention_head_size if arch == "bert" else attn.head_dim


def set_head_counts(layer: nn.Module, arch: str, heads: int, kv_heads: int) -> None:
    """Point the attention module's own head-count attributes at `heads` query and `kv_heads` key/value
    heads (after its projections were resized): transformers' attention forwards infer the head count
    from the projections' shapes, but GPT-2 splits its fused query|key|value output at `split_size`,
    grouped-query attention repeats each key/value head `num_key_value_groups` times, and older
    transformers releases read `num_heads` / `num_attention_heads` / `all_head_size`."""
    attn, d = attention_module(layer, arch), head_dim(layer, arch)
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads evenly")
    values = dict(num_attention_heads=heads, num_heads=heads, all_head_size=heads * d, split_size=heads * d,
                  num_key_value_heads=kv_heads, num_key_value_groups=heads // kv_heads)
    for name, value in values.items():
        if hasattr(attn, name):
            setattr(attn, name, value)


def resize_attention(layer: nn.Module, arch: str, heads: int, kv_heads: int) -> None:
    """Give one layer's attention `heads` query heads and `kv_heads` key/value heads (contents undefined)."""
    attn, d = attention_module(layer, arch), head_dim(layer, arch)
    if arch == "bert":
        hidden = _shape(attn.query)[0]
        for name in ("query", "key", "value"):
            _resized(attn, name, hidden, heads * d)
        _resized(layer.attention.output, "dense", heads * d, hidden)
    elif arch == "gpt2":
        hidden = _shape(attn.c_attn)[0]
        _resized(attn, "c_attn", hidden, 3 * heads * d)
        _resized(attn, "c_proj", heads * d, hidden)
    else:
        hidden = _shape(attn.q_proj)[0]
        _resized(attn, "q_proj", hidden, heads * d)
        _resized(attn, "k_proj", hidden, kv_heads * d)
        _resized(attn, "v_proj", hidden, kv_heads * d)
        _resized(attn, "o_proj", heads * d, hidden)
    set_head_counts(layer, arch, heads, kv_heads)


def resize_ffn(layer: nn.Module, arch: str, width: int) -> None:
    """Give one layer's FFN `width` neurons (contents undefined)."""
    if arch == "bert":
        hidden = _shape(layer.intermediate.dense)[0]
        _resized(layer.intermediate, "dense", hidden, width)
        _resized(layer.output, "dense", width, hidden)
    elif arch == "gpt2":
        hidden = _shape(layer.mlp.c_fc)[0]
        _resized(layer.mlp, "c_fc", hidden, width)
        _resized(layer.mlp, "c_proj", width, hidden)
    else:
        hidden = _shape(layer.mlp.gate_proj)[0]
        _resized(layer.mlp, "gate_proj", hidden, width)
        _resized(layer.mlp, "up_proj", hidden, width)
        _resized(layer.mlp, "down_proj", width, hidden)


def resize(backbone: nn.Module, arch: str, ffn_widths=None, attention_heads=None, kv_heads=None) -> None:
    """Resize every layer of a backbone built from its dense config to the per-layer FFN widths and head
    counts (None: keep the config's); a state dict of those shapes then loads into it."""
    layers = _layers(backbone, arch)
    for name, values in (("ffn_widths", ffn_widths), ("attention_heads", attention_heads), ("kv_heads", kv_heads)):
        if values is not None and len(values) != len(layers):
            raise ValueError(f"{name} has {len(values)} entries for a backbone of {len(layers)} layers")
    for l, layer in enumerate(layers):
        if ffn_widths is not None:
            resize_ffn(layer, arch, int(ffn_widths[l]))
        if attention_heads is not None:
            heads = int(attention_heads[l])
            resize_attention(layer, arch, heads, int(kv_heads[l]) if kv_heads is not None else heads)


# ---- configs and models -----------------------------------------------------------------------------------
# Each config is its architecture's own under a model_type of this file (`llm_anatomy_<arch>`), so that
# loading the folder without trust_remote_code fails instead of building transformers' own classifier
# with a new, random head. The per-layer lists and the head's dropout are extra config attributes
# (`ffn_widths`, `attention_heads`, `kv_heads`, `head_dropout`), which every transformers config keeps.
class PrunedBertConfig(BertConfig):
    model_type = "llm_anatomy_bert"


class PrunedGPT2Config(GPT2Config):
    model_type = "llm_anatomy_gpt2"


class PrunedLlamaConfig(LlamaConfig):
    model_type = "llm_anatomy_llama"


class _SentimentHead:
    """The backbone at its per-layer shapes plus llm-anatomy's head; mixed into each architecture's class."""

    arch: str
    is_decoder: bool

    def _build(self, config, backbone: nn.Module) -> None:
        resize(backbone, self.arch, getattr(config, "ffn_widths", None), getattr(config, "attention_heads", None),
               getattr(config, "kv_heads", None))
        setattr(self, self.base_model_prefix, backbone)
        self.dropout = nn.Dropout(getattr(config, "head_dropout", 0.1))
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None, **_ignored
                ) -> SequenceClassifierOutput:
        """Logits [batch, 1]; with `labels` (0/1 per row) also the binary cross-entropy the head was trained with."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)
        if self.is_decoder:
            kwargs.update(position_ids=decoder_position_ids(attention_mask), use_cache=False)
        elif token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = getattr(self, self.base_model_prefix)(**kwargs).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        logits = self.head(self.dropout(hidden[rows, target_positions(attention_mask, self.is_decoder)]))
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), labels.to(logits.dtype))
        return SequenceClassifierOutput(loss=loss, logits=logits)


class PrunedBertForSequenceClassification(_SentimentHead, BertPreTrainedModel):
    config_class = PrunedBertConfig
    arch, is_decoder = "bert", False

    def __init__(self, config):
        super().__init__(config)
        self._build(config, BertModel(config, add_pooling_layer=False))
        self.post_init()


class PrunedGPT2ForSequenceClassification(_SentimentHead, GPT2PreTrainedModel):
    config_class = PrunedGPT2Config
    arch, is_decoder = "gpt2", True

    def __init__(self, config):
        super().__init__(config)
        self._build(config, GPT2Model(config))
        self.post_init()


class PrunedLlamaForSequenceClassification(_SentimentHead, LlamaPreTrainedModel):
    config_class = PrunedLlamaConfig
    arch, is_decoder = "llama", True

    def __init__(self, config):
        super().__init__(config)
        self._build(config, LlamaModel(config))
        self.post_init()


# arch -> (config class, model class), for the exporter
CLASSES = {"bert": (PrunedBertConfig, PrunedBertForSequenceClassification),
           "gpt2": (PrunedGPT2Config, PrunedGPT2ForSequenceClassification),
           "llama": (PrunedLlamaConfig, PrunedLlamaForSequenceClassification)}
