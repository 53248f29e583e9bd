"""The anatomy stage end to end: `extract_stage` (model -> Parquet), `score_stage` (Parquet -> the
threshold-free scores) and `neuron_sets_stage` (scores + anatomy.threshold -> high neurons, graph, summary)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import torch

from .extract import extract_inputs, read_vectors, write_extraction
from .graph import layer_counts, neuron_graph
from .io import read_json, read_parquet, write_csv, write_json, write_parquet
from .lens import head_direction, lens_logits, lens_table, normed_states
from .models import load_classifier, set_threads
from .probes import anatomy_inputs, read_probes, sample_reviews
from .scores import (contributions, high_neuron_lists, layer_cosines, layer_score_table, neuron_cosines,
                     neuron_overlap, neuron_score_table, neuron_share, pairwise_mean_cosine, rank_agreement,
                     read_probe_scores)

log = logging.getLogger("llm_anatomy.anatomy")


def extract_stage(model_dir, probes_path, train: pd.DataFrame, val: pd.DataFrame, out: dict, p: dict) -> dict:
    """p: calibration_size, validation_size, seed, batch_size, precision, threads, device. out: hidden, ffn, inputs."""
    set_threads(p.get("threads"))
    start = time.perf_counter()
    model, tokenizer, meta = load_classifier(model_dir, p.get("device", "cpu"))
    inputs = anatomy_inputs(read_probes(probes_path),
                            sample_reviews(train, p["calibration_size"], p["seed"], "calibration"),
                            sample_reviews(val, p["validation_size"], p["seed"] + 1, "anatomy.validation_size"))
    loaded = time.perf_counter()
    ex = extract_inputs(model, tokenizer, meta, inputs["text"].tolist(), p["batch_size"], p["precision"],
                        desc="extract")
    write_extraction(ex, inputs, out["hidden"], out["ffn"], out["inputs"])
    info = dict(inputs=len(inputs), layers=model.adapter.num_layers, load_seconds=loaded - start,
                extract_seconds=time.perf_counter() - loaded)
    log.info("extracted %d inputs x %d layers in %.1f s (load %.1f s)", len(inputs), info["layers"] + 1,
             info["extract_seconds"], info["load_seconds"])
    return info


def score_stage(model_dir, hidden_path, ffn_path, inputs_path, out: dict, threads: int | None = None) -> dict:
    """The threshold-free tables from the extracted Parquet files: layer and neuron scores, the
    classifier lens, direct contributions, and `score_summary` (see docs/ANATOMY.md). What depends on
    anatomy.threshold is `neuron_sets_stage`'s, so changing the threshold leaves these files, and the
    pruning plans that read them, alone."""
    set_threads(threads)
    start = time.perf_counter()
    model, _, _ = load_classifier(model_dir)
    adapter = model.adapter
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
    write_parquet(layer_score_table(keys, cos, cos_normed, cos_prenorm), out["layer_scores"])

    # Figures 2/3: neuron scores of the probes (the paper's form; the other scorings alongside)
    values = [adapter.value_vectors(l).double().numpy() for l in range(adapter.num_layers)]
    final = hidden[is_probe, -1].astype(np.float64)
    s = neuron_cosines(values, final)
    s_prenorm = neuron_cosines(values, prenorm[is_probe].astype(np.float64))
    gained = [adapter.norm_linear_part(torch.from_numpy(v)).numpy() for v in values]
    s_gain = neuron_cosines(gained, final)
    write_parquet(neuron_score_table(probe_ids, s, score_prenorm=s_prenorm, score_gain=s_gain), out["neuron_scores"])

    # Beyond the paper: the classifier lens and direct contributions
    lens_parts = []
    for name in ("calibration", "validation"):
        sel = (keys["input_set"] == name).to_numpy()
        if sel.any():
            lens_parts.append(lens_table(name, lens_logits(model, hidden[sel]), inputs.loc[sel, "label"]))
    lens = pd.concat(lens_parts, ignore_index=True)
    write_csv(lens, out["lens"])
    _, acts = read_vectors(ffn_path, "activation", input_set="calibration")
    acts = [acts[:, l] for l in range(acts.shape[1])] if isinstance(acts, np.ndarray) else acts
    s_mean = [x.astype(np.float64).mean(0) for x in s]
    write_parquet(contributions(acts, values, head_direction(model), s_mean), out["contributions"])

    summary = dict(
        layers=adapter.num_layers, probes=int(is_probe.sum()),
        mean_layer_cosine=cos[is_probe].mean(0).tolist(),
        mean_layer_cosine_normed=cos_normed[is_probe].mean(0).tolist(),
        final_target_pairwise_cosine=pairwise_mean_cosine(final),
        lens_validation_accuracy=lens.loc[lens["input_set"] == "validation", "accuracy"].tolist(),
        score_seconds=time.perf_counter() - start,
    )
    write_json(out["score_summary"], summary)
    log.info("scored in %.1f s; lens validation accuracy by layer %s", summary["score_seconds"],
             [round(x, 3) for x in summary["lens_validation_accuracy"]])
    return summary


def neuron_sets_stage(neuron_scores_path, contributions_path, score_summary_path, out: dict,
                      threshold: float) -> dict:
    """What anatomy.threshold decides, from the score tables: the high and negative neuron shares and
    lists, their overlap across inputs, section 3.2's graph, the rank agreement of the cosine with the
    direct contribution, and the model's anatomy `summary` (the score summary included)."""
    start = time.perf_counter()
    probe_ids, s = read_probe_scores(neuron_scores_path)
    share = neuron_share(probe_ids, s, threshold)
    write_csv(share, out["neuron_share"])
    write_csv(high_neuron_lists(probe_ids, s, threshold), out["high_neurons"])
    overlap = neuron_overlap(s, threshold)
    write_csv(overlap, out["neuron_overlap"])

    # Section 3.2's graph on the probe-mean scores
    s_mean = [x.astype(np.float64).mean(0) for x in s]
    g = neuron_graph(s_mean, threshold)
    Path(out["graph"]).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(out["graph"]) + ".tmp")
    nx.write_graphml(g, tmp)
    tmp.replace(out["graph"])
    counts = layer_counts(g)
    write_csv(counts, out["graph_counts"])
    ranks = rank_agreement(read_parquet(contributions_path), threshold)
    write_csv(ranks, out["rank_agreement"])

    per_layer = share.groupby("layer")[["share_high", "share_negative"]].mean()
    scored = read_json(score_summary_path)
    summary = dict(
        threshold=threshold, layers=scored["layers"], probes=scored["probes"],
        mean_layer_cosine=scored["mean_layer_cosine"], mean_layer_cosine_normed=scored["mean_layer_cosine_normed"],
        share_high_per_layer=per_layer["share_high"].tolist(),
        share_negative_per_layer=per_layer["share_negative"].tolist(),
        max_share_high=float(share["share_high"].max()),
        layers_all_inputs_below_5pct=int((share.groupby("layer")["share_high"].max() < 0.05).sum()),
        mean_jaccard_per_layer=overlap["mean_jaccard"].tolist(),
        random_jaccard_per_layer=overlap["random_jaccard"].tolist(),
        final_target_pairwise_cosine=scored["final_target_pairwise_cosine"],
        graph_high_nodes=counts["n_high"].tolist(), graph_offset_nodes=counts["n_offset"].tolist(),
        funnel_necks=counts.loc[counts["funnel_neck"], "layer"].tolist(),
        lens_validation_accuracy=scored["lens_validation_accuracy"],
        spearman_signed=ranks["spearman_signed"].tolist(), spearman_abs=ranks["spearman_abs"].tolist(),
        score_seconds=scored["score_seconds"] + time.perf_counter() - start,
    )
    write_json(out["summary"], summary)
    log.info("neuron sets at threshold %.2f: share high per layer %s, funnel necks %s", threshold,
             np.round(summary["share_high_per_layer"], 4).tolist(), summary["funnel_necks"])
    return summary
