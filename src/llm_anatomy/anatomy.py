"""The anatomy stage end to end, one function per rule: `extract` (model -> Parquet), `score` (Parquet -> the
threshold-free scores) and `neuron_sets` (scores + anatomy.threshold -> high neurons, graph, summary)."""
from __future__ import annotations

import logging
import time

import networkx as nx
import numpy as np
import pandas as pd
import torch

from .data import read_split
from .extract import extract_inputs, read_vectors, write_extraction
from .graph import layer_counts, neuron_graph
from .io import atomic_path, read_json, read_parquet, write_csv, write_json, write_parquet
from .lens import head_direction, lens_logits, lens_table, normed_states
from .models import open_checkpoint
from .probes import anatomy_inputs, read_probes, sample_reviews
from . import scores as tables
from .scores import (high_neuron_lists, layer_cosines, layer_score_table, neuron_cosines, neuron_score_table,
                     pairwise_mean_cosine, read_probe_scores)

log = logging.getLogger("llm_anatomy.anatomy")


def extract(finetuned, train, val, probes, hidden, ffn, inputs, calibration_size: int, validation_size: int,
            seed: int, batch_size: int, precision: str, threads: int | None, device: str) -> dict:
    """Rule extract: every layer's target token and every FFN activation there, for the probes and seeded samples
    of the train (`calibration_size`) and validation (`validation_size`) reviews, to the `hidden`, `ffn` and
    `inputs` files. The test split is never read here."""
    start = time.perf_counter()
    ck = open_checkpoint(finetuned, device, threads)
    model = ck.model
    table = anatomy_inputs(read_probes(probes), sample_reviews(read_split(train), calibration_size, seed, "calibration"),
                           sample_reviews(read_split(val), validation_size, seed + 1, "anatomy.validation_size"))
    loaded = time.perf_counter()
    ex = extract_inputs(model, ck.tokenizer, ck.meta, table["text"].tolist(), batch_size, precision, desc="extract")
    write_extraction(ex, table, hidden, ffn, inputs)
    info = dict(inputs=len(table), layers=model.adapter.num_layers, load_seconds=loaded - start,
                extract_seconds=time.perf_counter() - loaded)
    log.info("extracted %d inputs x %d layers in %.1f s (load %.1f s)", len(table), info["layers"] + 1,
             info["extract_seconds"], info["load_seconds"])
    return info


def score(finetuned, hidden, ffn, inputs, layer_scores, neuron_scores, lens, contributions, score_summary,
          threads: int | None) -> None:
    """Rule score: the threshold-free tables from the extracted Parquet files: layer and neuron scores, the
    classifier lens, direct contributions, and `score_summary` (see docs/ANATOMY.md). What depends on
    anatomy.threshold is `neuron_sets`'s, so changing the threshold leaves these files, and the
    pruning plans that read them, alone."""
    start = time.perf_counter()
    model = open_checkpoint(finetuned, "cpu", threads).model
    adapter = model.adapter
    hidden_path, ffn_path, inputs_path = hidden, ffn, inputs
    inputs = read_parquet(inputs_path)
    keys, hidden = read_vectors(hidden_path, "vector")
    if not keys.reset_index(drop=True).equals(inputs[["input_set", "input_id"]].reset_index(drop=True)):
        raise ValueError(f"{hidden_path} and {inputs_path} list different inputs; rerun the extract rule")
    is_probe = (keys["input_set"] == "probe").to_numpy()
    probe_ids = keys.loc[is_probe, "input_id"].to_numpy()

    # Figure 1: layer scores for every input (the probes' mean feeds the threshold rules), in the
    # three decoder scorings (scores.SCORINGS; identical for encoders)
    prenorm = np.stack(inputs["final_prenorm"].to_numpy()).astype(np.float32)
    hidden_prenorm = hidden.copy()
    hidden_prenorm[:, -1] = prenorm
    cos = layer_cosines(hidden)
    cos_normed = layer_cosines(normed_states(model, hidden))
    cos_prenorm = layer_cosines(hidden_prenorm)
    write_parquet(layer_score_table(keys, cos, cos_normed, cos_prenorm), layer_scores)

    # Figures 2/3: neuron scores of the probes (the paper's form; the other scorings alongside)
    values = [adapter.value_vectors(l).double().numpy() for l in range(adapter.num_layers)]
    final = hidden[is_probe, -1].astype(np.float64)
    s = neuron_cosines(values, final)
    s_prenorm = neuron_cosines(values, prenorm[is_probe].astype(np.float64))
    gained = [adapter.norm_linear_part(torch.from_numpy(v)).numpy() for v in values]
    s_gain = neuron_cosines(gained, final)
    write_parquet(neuron_score_table(probe_ids, s, score_prenorm=s_prenorm, score_gain=s_gain), neuron_scores)

    # Beyond the paper: the classifier lens and direct contributions
    lens_parts = []
    for name in ("calibration", "validation"):
        sel = (keys["input_set"] == name).to_numpy()
        if sel.any():
            lens_parts.append(lens_table(name, lens_logits(model, hidden[sel]), inputs.loc[sel, "label"]))
    write_csv(lens_df := pd.concat(lens_parts, ignore_index=True), lens)
    _, acts = read_vectors(ffn_path, "activation", input_set="calibration")
    acts = [acts[:, l] for l in range(acts.shape[1])] if isinstance(acts, np.ndarray) else acts
    s_mean = [x.astype(np.float64).mean(0) for x in s]
    write_parquet(tables.contributions(acts, values, head_direction(model), s_mean), contributions)

    result = dict(layers=adapter.num_layers, probes=int(is_probe.sum()), mean_layer_cosine=cos[is_probe].mean(0).tolist(),
                  mean_layer_cosine_normed=cos_normed[is_probe].mean(0).tolist(),
                  final_target_pairwise_cosine=pairwise_mean_cosine(final),
                  lens_validation_accuracy=lens_df.loc[lens_df["input_set"] == "validation", "accuracy"].tolist(),
                  score_seconds=time.perf_counter() - start)
    write_json(score_summary, result)
    log.info("scored in %.1f s; lens validation accuracy by layer %s", result["score_seconds"],
             [round(x, 3) for x in result["lens_validation_accuracy"]])


def neuron_sets(neuron_scores, contributions, score_summary, neuron_share, high_neurons, neuron_overlap, graph,
                graph_counts, rank_agreement, summary, threshold: float) -> None:
    """Rule neuron_sets: what anatomy.threshold decides, from the score tables: the high and negative neuron
    shares and lists, their overlap across inputs, section 3.2's graph, the rank agreement of the cosine with the
    direct contribution, and the model's anatomy `summary` (the score summary included)."""
    start = time.perf_counter()
    probe_ids, s = read_probe_scores(neuron_scores)
    write_csv(share := tables.neuron_share(probe_ids, s, threshold), neuron_share)
    write_csv(high_neuron_lists(probe_ids, s, threshold), high_neurons)
    write_csv(overlap := tables.neuron_overlap(s, threshold), neuron_overlap)

    # Section 3.2's graph on the probe-mean scores
    g = neuron_graph([x.astype(np.float64).mean(0) for x in s], threshold)
    with atomic_path(graph) as tmp:
        nx.write_graphml(g, tmp)
    write_csv(counts := layer_counts(g), graph_counts)
    write_csv(ranks := tables.rank_agreement(read_parquet(contributions), threshold), rank_agreement)

    per_layer = share.groupby("layer")[["share_high", "share_negative"]].mean()
    scored = read_json(score_summary)
    result = dict(threshold=threshold, layers=scored["layers"], probes=scored["probes"],
                  mean_layer_cosine=scored["mean_layer_cosine"], mean_layer_cosine_normed=scored["mean_layer_cosine_normed"],
                  share_high_per_layer=per_layer["share_high"].tolist(),
                  share_negative_per_layer=per_layer["share_negative"].tolist(), max_share_high=float(share["share_high"].max()),
                  layers_all_inputs_below_5pct=int((share.groupby("layer")["share_high"].max() < 0.05).sum()),
                  mean_jaccard_per_layer=overlap["mean_jaccard"].tolist(),
                  random_jaccard_per_layer=overlap["random_jaccard"].tolist(),
                  final_target_pairwise_cosine=scored["final_target_pairwise_cosine"],
                  graph_high_nodes=counts["n_high"].tolist(), graph_offset_nodes=counts["n_offset"].tolist(),
                  funnel_necks=counts.loc[counts["funnel_neck"], "layer"].tolist(),
                  lens_validation_accuracy=scored["lens_validation_accuracy"],
                  spearman_signed=ranks["spearman_signed"].tolist(), spearman_abs=ranks["spearman_abs"].tolist(),
                  score_seconds=scored["score_seconds"] + time.perf_counter() - start)
    write_json(summary, result)
    log.info("neuron sets at threshold %.2f: share high per layer %s, funnel necks %s", threshold,
             np.round(result["share_high_per_layer"], 4).tolist(), result["funnel_necks"])
