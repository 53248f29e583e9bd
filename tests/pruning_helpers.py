"""Score tables for pruning tests and the scratch workflow: the anatomy stage's schema, computed directly.

layer_scores.parquet: input_set, input_id, layer (0..L), cosine; neuron_scores.parquet: input_id, layer,
neuron, score = cos(value vector, final target token).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from llm_anatomy.batching import pad


@torch.no_grad()
def quick_scores(model, tokenizer, texts, max_length: int = 64) -> tuple[pd.DataFrame, pd.DataFrame]:
    model.eval()
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    input_ids, mask = pad(ids, tokenizer.pad_token_id, "right")
    hidden = model.adapter.hidden_states(input_ids, mask)
    pos = model.adapter.target_positions(mask)
    rows = torch.arange(len(ids))
    target = torch.stack([h[rows, pos] for h in hidden], 1).double()  # [N, L+1, H]
    final = target[:, -1]
    cos = torch.nn.functional.cosine_similarity(target, final[:, None], dim=-1).numpy()
    n, L1 = cos.shape
    layer = pd.DataFrame({"input_set": "probe", "input_id": np.repeat(np.arange(n), L1),
                          "layer": np.tile(np.arange(L1), n).astype("int16"), "cosine": cos.reshape(-1).astype("float32")})
    parts = []
    for l in range(model.adapter.num_layers):
        v = model.adapter.value_vectors(l).double()
        s = torch.nn.functional.cosine_similarity(v[None], final[:, None], dim=-1).numpy()  # [N, F]
        parts.append(pd.DataFrame({"input_id": np.repeat(np.arange(n), s.shape[1]), "layer": np.int16(l),
                                   "neuron": np.tile(np.arange(s.shape[1]), n).astype("int32"),
                                   "score": s.reshape(-1).astype("float32")}))
    return layer, pd.concat(parts, ignore_index=True)
