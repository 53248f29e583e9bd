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
"""
from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..adapters import target_positions
from ..batching import progress_batches
from ..device import autocast, cpu_fields, machine_info, model_device
from ..heads import remove_heads
from ..inference import backbone_dtype, inference_model, loop_parts, predict_logits
from ..io import json_digest, read_json, write_json
from ..models import SentimentClassifier
from ..progress import progress
from ..replay import StopForward
from ..surgery import remove_masked
from .joint import head_configurations, kept_heads
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


@dataclass
class LatencyTable:
    """Seconds of one layer over the reference reviews, by head configuration (rows) and FFN width (columns)."""

    signature: dict
    heads: list[tuple[int, int]]   # (query heads, key/value heads) of each row
    widths: list[int]              # kept FFN widths of the columns, increasing
    body: np.ndarray               # a layer below the last
    readout: np.ndarray            # the last layer (the read token only)
    base: float                    # the rest of the pass: embeddings, head, batching, the loop's Python
    dense: float                   # the dense loop's measured pass over the same reviews
    info: dict = field(default_factory=dict)

    @property
    def layers(self) -> int:
        return self.signature["shapes"]["layers"]

    def layer_seconds(self, query: int, kv: int, width: int, last: bool = False) -> float:
        """One layer's seconds; no query heads left costs one (the layer keeps one, zeroed), no neurons one."""
        if query == 0:
            query, kv = 1, 1
        key = (int(query), int(kv))
        if key not in self.heads:
            raise ValueError(f"({query} query, {kv} key/value heads) was not measured; the table has {self.heads}")
        row = (self.readout if last else self.body)[self.heads.index(key)]
        return float(np.interp(max(int(width), 1), self.widths, row))

    def seconds(self, heads: Sequence[tuple[int, int]], widths: Sequence[int]) -> float:
        """A whole pass of a model with these per-layer (query, key/value) heads and FFN widths."""
        if len(heads) != self.layers or len(widths) != self.layers:
            raise ValueError(f"{len(heads)} head counts and {len(widths)} widths for a table of {self.layers} layers")
        last = self.layers - 1
        return self.base + sum(self.layer_seconds(q, kv, w, l == last) for l, ((q, kv), w) in enumerate(zip(heads, widths)))

    @property
    def dense_predicted(self) -> float:
        s = self.signature["shapes"]
        return self.seconds([(s["heads"], s["kv_heads"])] * self.layers, [s["ffn_width"]] * self.layers)

    def speedup(self, heads: Sequence[tuple[int, int]], widths: Sequence[int]) -> float:
        return self.dense_predicted / self.seconds(heads, widths)

    def to_dict(self) -> dict:
        return dict(signature=self.signature, heads=[list(h) for h in self.heads], widths=list(self.widths),
                    body=self.body.tolist(), readout=self.readout.tolist(), base=self.base, dense=self.dense,
                    info=self.info)

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        return cls(d["signature"], [tuple(h) for h in d["heads"]], list(d["widths"]), np.asarray(d["body"], float),
                   np.asarray(d["readout"], float), float(d["base"]), float(d["dense"]), d.get("info", {}))


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


def latency_table(model: SentimentClassifier, encoded: Sequence[Sequence[int]], pad_id: int, padding_side: str,
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
