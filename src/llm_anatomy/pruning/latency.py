"""A latency model of this machine: the seconds one transformer layer takes against its kept attention heads
and FFN width, measured at the evaluation's shapes, and the model's pass predicted as their sum.

What is timed is the evaluation loop's own code (`inference.inference_model`: bf16 weights stored once, fused
FFN input maps, the last block for the read token only) on reference reviews (length-sorted batches of
`batch_size`, e.g. the validation reviews, whose lengths follow the test reviews'). The inputs the first
block receives in each batch are captured once; then, for every head configuration (query and key/value
heads, `joint.head_configurations`) and every FFN width of a grid, a copy of the model is pruned to that
shape (the first heads and neurons: the time does not depend on which) and its first block (a layer below
the last) and last block (the read-token-only readout) are run on those inputs. Each is timed against the
dense model's same block in alternating rounds (the ratio's median times the dense block's median, so a
slow minute of a shared machine moves both). The rest of a pass (embeddings, head, batching) is the dense
loop's measured pass minus its layers: `base`. A model with per-layer heads (q_l, kv_l) and widths w_l is
predicted to take base + sum_{l < L-1} body(q_l, kv_l, w_l) + readout(q_L, kv_L, w_L), with the widths
interpolated linearly between the grid's; `check_predictions` times whole pruned models against it.

The table is cached per machine (`table_path`, under `layout.Layout.latency`): the file name carries a digest
of the CPU model and its full flag set, torch's version, the thread count, the precision, the batch size, the
model's shapes and the reference lengths, so another CPU kind (or any of those changed) measures its own; a
cached table with another width grid is measured again, and `remeasure` measures it again regardless.

Rule latency_table (`latency_table`) copies this machine's cached table (`cached_table`) to a model's
speed/latency_table.json for its speed targets. It is a timing: Snakemake cannot see that the machine changed, so the
file records the machine (its `signature`) and every plan made from it follows that machine. A profile may ask for
the multiply-add table instead (`macs_table`, no timing: the tiny profile's). `LatencyTable` itself lives in
`joint` (no torch), so a plan reads it without this module.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..adapters import target_positions
from ..batching import progress_batches
from ..costs import forward_macs
from ..device import autocast, cpu_fields, machine_info, model_device
from ..heads import remove_heads
from ..inference import backbone_dtype, inference_model, loop_parts, predict_logits
from ..io import json_digest, read_json, write_json
from ..data import read_split
from ..models import SentimentClassifier, open_checkpoint
from ..progress import progress
from ..replay import StopForward
from ..surgery import remove_masked
from .joint import LatencyTable, head_configurations, kept_heads  # noqa: F401 (LatencyTable: read here too)
from .timing import time_variants

log = logging.getLogger(__name__)

SCHEMA = 1  # bump when what is measured changes: every cached table is then remeasured


def machine_signature() -> dict:
    """What makes a timing this machine's: the CPU model and a digest of its full flag set, torch, threads."""
    fields = cpu_fields()
    flags = " ".join(sorted(fields.get("flags", "").split()))
    info = machine_info(torch.device("cpu"))
    return dict(cpu=info["cpu"], cpu_flags_sha1=hashlib.sha1(flags.encode()).hexdigest(),
                cpu_features=info["cpu_features"], torch=info["torch"], threads=info["threads"])


def model_shapes(model: SentimentClassifier) -> dict:
    """The dense shapes a table is measured for (every layer alike)."""
    a = model.adapter
    shapes = {(a.ffn_width(l), a.attention(l).heads, a.attention(l).kv_heads) for l in range(a.num_layers)}
    if len(shapes) != 1:
        raise ValueError(f"a latency table is measured on the dense model; this one has per-layer shapes {sorted(shapes)}")
    width, heads, kv = shapes.pop()
    return dict(arch=a.arch, layers=a.num_layers, hidden=a.hidden_size, head_dim=a.attention(0).head_dim, heads=heads,
                kv_heads=kv, ffn_width=width)


def signature(model: SentimentClassifier, lengths: Sequence[int], precision: str, batch_size: int) -> dict:
    """Everything a cached table must match: the machine, the model's shapes, the loop's settings, the lengths."""
    digest = hashlib.sha1(np.asarray(sorted(lengths), dtype=np.int64).tobytes()).hexdigest()
    return dict(schema=SCHEMA, machine=machine_signature(), shapes=model_shapes(model), precision=precision,
                batch_size=batch_size, reviews=len(lengths), mean_length=float(np.mean(lengths)), lengths_sha1=digest)


def table_path(cache_dir: str | Path, sig: dict) -> Path:
    """<cache_dir>/<arch>-<layers>x<hidden>-<heads>h<kv>kv-ffn<width>-<precision>-b<batch>-<digest>.json."""
    s = sig["shapes"]
    key = json_digest(sig)
    return Path(cache_dir) / (f"{s['arch']}-{s['layers']}x{s['hidden']}-{s['heads']}h{s['kv_heads']}kv-ffn{s['ffn_width']}"
                              f"-{sig['precision']}-b{sig['batch_size']}-{key}.json")


def width_grid(width: int, points: int = 9) -> list[int]:
    """`points` kept widths from 1 to `width`, evenly spaced."""
    return sorted({max(1, int(round(width * i / (points - 1)))) for i in range(points)})


def _shaped_blocks(model: SentimentClassifier, query: int, kv: int, width: int, precision: str):
    """(first block, last block) of a copy of `model` whose two blocks keep `query` / `kv` heads and `width`
    neurons (`pruned_to`), made as the loop runs them (`inference_model`)."""
    a = model.adapter
    heads = [(a.attention(l).heads, a.attention(l).kv_heads) for l in range(a.num_layers)]
    widths = a.ffn_widths()
    for layer in (0, a.num_layers - 1):
        heads[layer], widths[layer] = (query, kv), width
    runner = inference_model(pruned_to(model, heads, widths), precision)
    return runner.adapter.layers()[0], runner.adapter.layers()[-1]


class _Inputs:
    """Each reference batch as the loop feeds its first block (captured once from the dense runner)."""

    def __init__(self, runner, encoded, pad_id, padding_side, batch_size, precision):
        device = model_device(runner)
        stored = backbone_dtype(runner) != torch.float32
        # the autocast `predict_logits` runs under: none where the weights are stored in bf16
        self.context = lambda: autocast("fp32" if stored else precision, device)
        block = runner.adapter.layers()[0]
        self.calls: list[tuple] = []
        self.decoder = runner.adapter.is_decoder

        def grab(_module, args, kwargs):
            self.calls.append((args, kwargs))
            raise StopForward

        self.masks = []
        handle = block.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.inference_mode(), self.context():
                for _idx, ids, mask in progress_batches(encoded, batch_size, pad_id, padding_side, device=device):
                    try:
                        runner(ids, mask)
                    except StopForward:
                        pass
                    self.masks.append((mask, target_positions(mask, self.decoder)))
        finally:
            handle.remove()

    def run(self, block, readout: bool) -> float:
        """Seconds of `block` over every batch (the readout block reads its target positions per batch, as the
        backbone's pre-hook sets them in the loop)."""
        with torch.inference_mode(), self.context():
            start = time.perf_counter()
            for (args, kwargs), (mask, positions) in zip(self.calls, self.masks):
                if readout:
                    block._readout_key_mask, block._readout_positions = mask, positions
                block(*args, **kwargs)
            return time.perf_counter() - start


def measure_table(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int, padding_side: str,
                  precision: str, batch_size: int = 32, repeats: int = 3, widths: Sequence[int] | None = None
                  ) -> LatencyTable:
    """Measure a `LatencyTable` (module docstring) on the dense `model` over the reviews `encoded`."""
    start = time.perf_counter()
    lengths = [len(e) for e in encoded]
    sig = signature(model, lengths, precision, batch_size)
    shapes = sig["shapes"]
    widths = list(widths) if widths is not None else width_grid(shapes["ffn_width"])
    configs = head_configurations(shapes["heads"], shapes["kv_heads"])
    dense_runner = inference_model(model, precision)
    inputs = _Inputs(dense_runner, encoded, pad_id, padding_side, batch_size, precision)
    ref_body, ref_read = dense_runner.adapter.layers()[0], dense_runner.adapter.layers()[-1]
    L = shapes["layers"]

    def base_rounds(n):
        full, body, read = [], [], []
        for r in range(n):
            steps = [("full", lambda: predict_logits(dense_runner, encoded, pad_id, batch_size, precision, padding_side)),
                     ("body", lambda: inputs.run(ref_body, False)), ("read", lambda: inputs.run(ref_read, True))]
            for name, fn in (steps if r % 2 == 0 else steps[::-1]):
                t0 = time.perf_counter()
                fn()
                {"full": full, "body": body, "read": read}[name].append(time.perf_counter() - t0)
        return full, body, read

    inputs.run(ref_body, False)  # warm-up
    inputs.run(ref_read, True)
    full, body_ref, read_ref = base_rounds(repeats)
    body = np.zeros((len(configs), len(widths)))
    readout = np.zeros_like(body)
    bar = progress(total=len(configs) * len(widths), desc="latency table")
    for i, (q, kv) in enumerate(configs):
        for j, w in enumerate(widths):
            first, last = _shaped_blocks(model, q, kv, w, precision)
            inputs.run(first, False)  # warm-up: kernels for these shapes
            inputs.run(last, True)
            ratios_body, ratios_read = [], []
            for r in range(repeats):
                for ref, blk, is_read in ((ref_body, first, False), (ref_read, last, True)):
                    if r % 2 == 0:
                        a = inputs.run(ref, is_read)
                        b = inputs.run(blk, is_read)
                    else:
                        b = inputs.run(blk, is_read)
                        a = inputs.run(ref, is_read)
                    (ratios_read if is_read else ratios_body).append(b / a)
                    (read_ref if is_read else body_ref).append(a)
            body[i, j], readout[i, j] = float(np.median(ratios_body)), float(np.median(ratios_read))
            del first, last
            bar.update()
    bar.close()
    more = base_rounds(repeats)  # the base again at the end: the machine may have changed pace meanwhile
    full, body_ref, read_ref = full + more[0], body_ref + more[1], read_ref + more[2]
    t_body, t_read, t_full = (float(np.median(x)) for x in (body_ref, read_ref, full))
    body *= t_body
    readout *= t_read
    base = t_full - (L - 1) * t_body - t_read
    info = dict(seconds=time.perf_counter() - start, repeats=repeats, loop=loop_parts(dense_runner),
                measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), load_average=_load_average(),
                dense_body_spread=[float(np.min(body_ref)), t_body, float(np.max(body_ref))],
                dense_full_spread=[float(np.min(full)), t_full, float(np.max(full))])
    log.info("latency table: %d head configurations x %d widths in %.0f s; dense pass %.3f s = base %.3f + %d x %.3f + "
             "readout %.3f", len(configs), len(widths), info["seconds"], t_full, base, L - 1, t_body, t_read)
    return LatencyTable(sig, configs, widths, body, readout, base, t_full, info)


def _load_average() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def cached_table(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int, padding_side: str,
                  precision: str, batch_size: int, cache_dir: str | Path, repeats: int = 3,
                  remeasure: bool = False, widths: Sequence[int] | None = None) -> tuple[LatencyTable, Path]:
    """(table, its file): this machine's cached table for these shapes and reviews, measured (and written
    atomically) when there is none, when it has another width grid than `widths` (default `width_grid`), or
    when `remeasure`."""
    sig = signature(model, [len(e) for e in encoded], precision, batch_size)
    path = table_path(cache_dir, sig)
    widths = list(widths) if widths is not None else width_grid(sig["shapes"]["ffn_width"])
    if path.exists() and not remeasure:
        table = LatencyTable.from_dict(read_json(path))
        if table.signature == sig and table.widths == widths:
            return table, path
        log.warning("%s was measured for another signature or width grid; remeasuring", path)
    table = measure_table(model, encoded, pad_id, padding_side, precision, batch_size, repeats=repeats, widths=widths)
    write_json(path, table.to_dict())
    return table, path


def macs_table(model: SentimentClassifier, encoded: Sequence[Sequence[int]], precision: str, batch_size: int,
               widths: Sequence[int] | None = None) -> LatencyTable:
    """A `LatencyTable` whose seconds are multiply-adds (`costs.forward_macs` over the reviews `encoded`, as the loop
    runs them), 1e-9 s each, with no time outside the layers: no timing, so the same model and reviews give the
    same table on any machine. Its speedups are the pruned models' multiply-add bounds (`speedup_bound`), which on a
    CPU real speedups fall short of (docs/SPEED.md); the tiny profile plans on it so its runs compare exactly."""
    lengths = [len(e) for e in encoded]
    sig = dict(signature(model, lengths, precision, batch_size), machine="multiply-adds")
    shapes = sig["shapes"]
    widths = list(widths) if widths is not None else width_grid(shapes["ffn_width"])
    configs = head_configurations(shapes["heads"], shapes["kv_heads"])
    L = shapes["layers"]
    body, readout = np.zeros((len(configs), len(widths))), np.zeros((len(configs), len(widths)))
    for i, (q, kv) in enumerate(configs):
        for j, w in enumerate(widths):
            a = pruned_to(model, [(q, kv)] * L, [w] * L).adapter  # every layer alike: body = all layers' / L
            body[i, j] = forward_macs(a, lengths, readout=False) / L * 1e-9
            readout[i, j] = forward_macs(a, lengths) * 1e-9 - (L - 1) * body[i, j]
    table = LatencyTable(sig, configs, widths, body, readout, base=0.0, dense=0.0, info=dict(kind="multiply-adds"))
    table.dense = table.dense_predicted
    return table


def pruned_to(model: SentimentClassifier, heads: Sequence[tuple[int, int]], widths: Sequence[int]) -> SentimentClassifier:
    """A copy of `model` with per-layer (query, key/value) heads and FFN widths (the first heads and neurons;
    none left keeps one, zeroed, as `heads.remove_heads` and `surgery.remove_masked` do)."""
    m = copy.deepcopy(model)
    a = m.adapter
    drop_heads, drop_neurons = [], []
    for layer, ((q, kv), w) in enumerate(zip(heads, widths)):
        block = a.attention(layer)
        # no importance: kept_heads' ties keep the first heads of the first groups (the time does not depend on which)
        keep = kept_heads(np.zeros(block.heads), block.kv_heads, q, kv).tolist()
        drop_heads.append([] if (q, kv) == (block.heads, block.kv_heads) else sorted(set(range(block.heads)) - set(keep)))
        drop_neurons.append(range(w, a.ffn_width(layer)))
    remove_heads(a, drop_heads)
    remove_masked(a, drop_neurons)
    return m


def check_predictions(model: SentimentClassifier, table: LatencyTable, encoded, pad_id: int, padding_side: str,
                      precision: str, batch_size: int, shapes: Sequence[tuple[list, list]], repeats: int = 5) -> list[dict]:
    """Time the dense model and one pruned copy per (heads, widths) of `shapes` as whole passes of the loop, in
    alternating rounds (`timing.time_variants`), against the table's predictions: per shape, the measured and
    predicted seconds and speedups and their relative errors."""
    variants = {"dense": model}
    for i, (heads, widths) in enumerate(shapes):
        variants[f"shape{i}"] = pruned_to(model, heads, widths)
    times = time_variants(variants, encoded, pad_id, batch_size, precision, padding_side, repeats)
    dense = float(np.median(times["dense"]))
    rows = []
    for i, (heads, widths) in enumerate(shapes):
        t = float(np.median(times[f"shape{i}"]))
        predicted = table.seconds(heads, widths)
        rows.append(dict(heads=[list(h) for h in heads], widths=list(widths), seconds=t, predicted_seconds=predicted,
                         seconds_error=predicted / t - 1, speedup=dense / t, predicted_speedup=table.speedup(heads, widths),
                         speedup_error=table.speedup(heads, widths) / (dense / t) - 1))
    rows.append(dict(heads="dense", seconds=dense, predicted_seconds=table.dense_predicted,
                     seconds_error=table.dense_predicted / dense - 1))
    return rows


def latency_table(finetuned, val, latency_table, cache: str, kind: str, reviews: int, repeats: int, batch_size: int,
                  threads: int | None, device: str) -> dict:
    """Rule latency_table: the model's table on the first `reviews` validation reviews at the evaluation's batch
    size, written to `latency_table`: kind `measured`, this machine's (measured into `cache` unless it holds
    one); kind `macs`, multiply-adds (`latency.macs_table`: no timing, the same on every machine)."""
    ck = open_checkpoint(finetuned, device, threads)
    ref = ck.encode(read_split(val)["text"].iloc[:reviews].tolist())
    if kind == "macs":
        table, cached = macs_table(ck.model, ref, ck.precision, batch_size), None
    elif kind == "measured":
        table, cached = cached_table(ck.model, ref, ck.pad_id, ck.padding_side, ck.precision, batch_size,
                                              cache, repeats)
    else:
        raise ValueError(f"latency table kind {kind!r}: choose measured (this machine's) or macs (multiply-adds)")
    write_json(latency_table, table.to_dict())
    return dict(kind=kind, cache=str(cached), reviews=len(ref), dense_s=round(table.dense, 4),
                measured_at=table.info.get("measured_at"))
