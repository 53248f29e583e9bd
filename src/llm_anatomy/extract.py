"""Target-token hidden states and FFN activations of a fine-tuned classifier, to Parquet.

hidden_states.parquet, one row per (input, layer), layers 0..L:
  input_set  string                      "probe" | "calibration" | "validation" (probes.py)
  input_id   int64
  layer      int16                       0 = embedding output, l = output of block l, L = last
  vector     fixed_size_list<float32>[H] the target token's hidden state (CLS for encoders, last
                                         real token for decoders). Hugging Face convention: the
                                         layer-L vector is after the final norm (ln_f / norm) for
                                         decoders, exactly what the head reads; 0..L-1 are not.
ffn_activations.parquet, one row per (input, block), blocks 0..L-1:
  input_set, input_id  as above
  layer      int16                       FFN block index
  activation fixed_size_list<float32>[F] the input of the FFN's output projection at the target
                                         token: one value per neuron (GELU output for BERT/GPT-2,
                                         silu(gate) * up for Llama). FFN output = activation @ V + b.
anatomy_inputs.parquet, one row per input: input_set, input_id, text, label, n_tokens, tokens_cut (tokens
  truncation removed: long probes and reviews are cut to max_length, never silently), logit, and
  final_prenorm list<float32>[H]          the target token entering the final norm (decoders: the last
                                         block's output before ln_f / norm; encoders: = layer L),
                                         for the decoder scoring variants (docs/ANATOMY.md)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .adapters import removed_on_exit
from .batching import encode_reviews, progress_batches
from .device import autocast, model_device
from .io import read_back, write_parquet
from .models import SentimentClassifier


class Extraction:
    """Arrays in input order: hidden [N, L+1, H], ffn [L] x [N, F_l], logits [N], token counts [N],
    final_prenorm [N, H] (the target entering the final norm; = hidden[:, L] without one)."""

    def __init__(self, hidden: np.ndarray, ffn: list[np.ndarray], logits: np.ndarray, n_tokens: np.ndarray,
                 final_prenorm: np.ndarray):
        self.hidden, self.ffn, self.logits, self.n_tokens = hidden, ffn, logits, n_tokens
        self.final_prenorm = final_prenorm
        self.tokens_cut: np.ndarray | None = None  # per input, tokens truncation removed (set by extract_inputs)


@torch.inference_mode()
def extract_targets(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int,
                    padding_side: str = "right", batch_size: int = 16, precision: str = "fp32",
                    desc: str | None = None) -> Extraction:
    """One batched, gradient-free pass: every layer's target token, every neuron's activation there."""
    model.eval()
    adapter = model.adapter
    n, n_layers = len(encoded), adapter.num_layers
    hidden = np.empty((n, n_layers + 1, adapter.hidden_size), dtype=np.float32)
    ffn = [np.empty((n, adapter.ffn_width(layer)), dtype=np.float32) for layer in range(n_layers)]
    logits = np.empty(n, dtype=np.float32)
    state: dict = {}

    def grab(key):  # key: a block's index (its FFN activations) or "prenorm" (the final norm's input)
        def hook(_module, args):
            state[key] = args[0][state["rows"], state["pos"]].float().cpu().numpy()  # args[0]: [batch, seq, width]
        return hook

    device = model_device(model)
    norm = adapter.final_norm_module()
    prenorm = np.empty((n, adapter.hidden_size), dtype=np.float32)
    bar = progress_batches(encoded, batch_size, pad_id, padding_side, desc, mininterval=10, device=device)
    with removed_on_exit([norm.register_forward_pre_hook(grab("prenorm"))] if norm is not None else []), \
            adapter.activation_hooks(grab), autocast(precision, device):
        for idx, ids, mask in bar:
            state["rows"] = torch.arange(len(idx), device=device)
            state["pos"] = adapter.target_positions(mask)
            states = adapter.hidden_states(ids, mask)
            targets = torch.stack([h[state["rows"], state["pos"]] for h in states], dim=1)  # [b, L+1, H]
            hidden[idx] = targets.float().cpu().numpy()
            prenorm[idx] = state.pop("prenorm") if norm is not None else hidden[idx, -1]
            logits[idx] = model.head_logits(targets[:, -1]).float().cpu().numpy()
            for layer in range(n_layers):
                ffn[layer][idx] = state.pop(layer)
    return Extraction(hidden, ffn, logits, np.array([len(s) for s in encoded], dtype=np.int64), prenorm)


def extract_inputs(model: SentimentClassifier, tokenizer, meta: dict, texts: Sequence[str], batch_size: int,
                   precision: str, desc: str | None = None) -> Extraction:
    """Tokenise as the model was fine-tuned (max_length, truncation and padding side), then extract."""
    encoded = encode_reviews(tokenizer, meta, texts, what="anatomy inputs")
    ex = extract_targets(model, encoded, tokenizer.pad_token_id, meta.get("padding_side", "right"),
                         batch_size, precision, desc)
    ex.tokens_cut = np.asarray(encoded.cut, dtype=np.int64)
    return ex


def _vector_table(keys: pd.DataFrame, arrays: list[np.ndarray], column: str) -> pa.Table:
    """Rows (input, layer) in input-major order from per-layer arrays [N, D]."""
    n, n_layers = len(keys), len(arrays)
    width = arrays[0].shape[1]
    if any(a.shape[1] != width for a in arrays):  # physically pruned FFNs: ragged widths
        vec = pa.array([a[i].tolist() for i in range(n) for a in arrays], type=pa.list_(pa.float32()))
    else:
        flat = np.stack(arrays, axis=1).reshape(-1).astype(np.float32)  # [N, L, D] -> flat
        vec = pa.FixedSizeListArray.from_arrays(pa.array(flat), width)
    return pa.table({"input_set": pa.array(np.repeat(keys["input_set"].to_numpy(), n_layers).astype(str)),
                     "input_id": pa.array(np.repeat(keys["input_id"].to_numpy(np.int64), n_layers)),
                     "layer": pa.array(np.tile(np.arange(n_layers, dtype=np.int16), n)), column: vec})


def write_extraction(ex: Extraction, inputs: pd.DataFrame, hidden_path, ffn_path, inputs_path) -> None:
    """Write the two vector tables and the inputs table (with the model's logit and token count)."""
    keys = inputs[["input_set", "input_id"]].reset_index(drop=True)
    write_parquet(_vector_table(keys, [ex.hidden[:, i] for i in range(ex.hidden.shape[1])], "vector"), hidden_path)
    write_parquet(_vector_table(keys, ex.ffn, "activation"), ffn_path)
    cut = ex.tokens_cut if ex.tokens_cut is not None else np.zeros(len(inputs), dtype=np.int64)
    write_parquet(inputs.assign(n_tokens=ex.n_tokens, tokens_cut=cut, logit=ex.logits,
                                final_prenorm=list(ex.final_prenorm)), inputs_path)


def read_vectors(path, column: str, input_set: str | None = None) -> tuple[pd.DataFrame, np.ndarray | list]:
    """Inverse of the writer: (keys [N] with input_set, input_id; array [N, layers, D]).

    Ragged (variable-width) tables come back as a list over layers of [N, D_l] arrays."""
    filters = [("input_set", "=", input_set)] if input_set else None
    table = read_back(path, lambda p: pq.read_table(p, filters=filters))
    if table.num_rows == 0:
        raise ValueError(f"{path}: no rows" + (f" for input_set {input_set!r}" if input_set else ""))
    layers = table.column("layer").to_numpy().astype(np.int64)
    n_layers = int(layers.max()) + 1
    n = table.num_rows // n_layers
    if table.num_rows % n_layers or not np.array_equal(layers, np.tile(np.arange(n_layers), n)):
        raise ValueError(f"{path}: rows are not (input, layer 0..{n_layers - 1}) in input-major order; "
                         "rewrite it with llm_anatomy.extract.write_extraction")
    keys = pd.DataFrame({"input_set": table.column("input_set").to_numpy(zero_copy_only=False)[::n_layers],
                         "input_id": table.column("input_id").to_numpy()[::n_layers]})
    col = table.column(column).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return keys, col.flatten().to_numpy().reshape(n, n_layers, col.type.list_size)
    rows = col.to_pylist()
    return keys, [np.array([rows[i * n_layers + layer] for i in range(n)], dtype=np.float32)
                  for layer in range(n_layers)]
