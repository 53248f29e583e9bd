"""`llm-anatomy export`: a classifier folder (fine-tuned or pruned) -> a folder that runs without llm_anatomy.

The folder holds what `transformers.AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)` needs: `config.json` (the backbone's config under model_type
`llm_anatomy_<arch>`, the per-layer `ffn_widths`, `attention_heads` and `kv_heads`, the head's
`head_dropout`, `num_labels` 1 and an `auto_map` naming the classes), `model.safetensors` (backbone
and head, float32), `modeling_llm_anatomy.py` (the classes; torch and transformers only) and the
tokenizer files, set to the checkpoint's max_length, truncation side and padding side (AutoTokenizer
reads the config first, so it too takes `trust_remote_code=True`). The model returns `logits` of
shape [batch, 1], the log-odds of a positive review. With `onnx`, also `model.onnx` (+
`model.onnx.data`, its weights): inputs `input_ids` and `attention_mask` (int64, [batch, sequence],
both axes dynamic), output `logits` [batch, 1]. `export.json` records the source, the shapes and the
checks below.

Checked before the folder is written (nothing is left on failure): the folder's model, reloaded from
the written files, gives the classifier's logits within 1e-5 on probe reviews tokenised by the folder's
tokenizer; ONNX Runtime gives the torch model's logits within 1e-4 (float32, kernels summing in
another order) on batches of other shapes than the export's example.
"""
from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from . import modeling_llm_anatomy as portable
from .io import atomic_dir, write_json
from .models import SentimentClassifier, load_classifier

log = logging.getLogger(__name__)

EXPORT_FILE = "export.json"
ONNX_FILE = "model.onnx"
MODELING_FILE = Path(portable.__file__).name
FROM_PRETRAINED_TOL = 1e-5  # the same modules on the same weights: equal up to float32 rounding
ORT_TOL = 1e-4  # another runtime's float32 kernels (the timing job's equality threshold)
# Probe reviews for the checks: the ONNX example is the first two, the checks use other batch shapes.
PROBES = ["A wonderful, moving film.", "Dull. I walked out after twenty minutes and did not come back.",
          "Not bad at all.", "The plot twists kept me guessing until the very last scene, and the score was lovely.",
          "An overlong mess."]


@torch.no_grad()
def hf_model(model: SentimentClassifier) -> torch.nn.Module:
    """The classifier as the folder's model class, holding the same weights (float32, eval mode); its config is
    the backbone's as the folder's config class, with the per-layer shapes, the head's dropout, one label and
    the auto_map."""
    config_cls, model_cls = portable.CLASSES[model.adapter.arch]
    base = model.backbone.config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version", "id2label", "label2id",
                "_name_or_path", "num_labels"):
        base.pop(key, None)
    adapter = model.adapter
    module = MODELING_FILE.removesuffix(".py")
    config = config_cls(**base, ffn_widths=adapter.ffn_widths(), attention_heads=adapter.head_counts(),
                        kv_heads=adapter.kv_head_counts(), head_dropout=model.dropout.p,
                        id2label={0: "positive"}, label2id={"positive": 0}, architectures=[model_cls.__name__],
                        auto_map={"AutoConfig": f"{module}.{config_cls.__name__}",
                                  "AutoModelForSequenceClassification": f"{module}.{model_cls.__name__}"})
    out = model_cls(config).eval()
    state = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("pooler.")}  # unused by the head
    missing, unexpected = getattr(out, out.base_model_prefix).load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise RuntimeError(f"the backbone's weights do not fit the export class: missing={missing} unexpected={unexpected}")
    out.head.load_state_dict(model.head.state_dict())
    return out.float()


class _Logits(torch.nn.Module):
    """input_ids, attention_mask -> logits [batch, 1]: the tensor ONNX exports."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _probe_batch(tokenizer, texts) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def export_onnx(model: torch.nn.Module, tokenizer, path: Path) -> dict:
    """Write `model` (the folder's class) to ONNX with dynamic batch and sequence axes; check ONNX Runtime's
    logits against the torch model on batches of shapes the export never saw."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeError("--onnx needs onnxruntime, onnx and onnxscript: pip install 'llm-anatomy[onnx]'") from err
    wrapper = _Logits(model).eval()
    example = _probe_batch(tokenizer, PROBES[:2])
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    with warnings.catch_warnings():  # the two inputs share both axes, which the exporter reports per axis name
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis")
        torch.onnx.export(wrapper, example, str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], verbose=False, dynamo=True,
                          dynamic_shapes={"input_ids": dims, "attention_mask": dims})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes, worst = [], 0.0
    for texts in (PROBES, PROBES[2:3], PROBES[1:4]):
        ids, mask = _probe_batch(tokenizer, texts)
        with torch.no_grad():
            expect = wrapper(ids, mask).numpy()
        got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        worst = max(worst, float(np.abs(got - expect).max()))
        shapes.append(list(ids.shape))
    if worst > ORT_TOL:
        raise RuntimeError(f"ONNX Runtime's logits differ from the torch model's by {worst:.3g} (> {ORT_TOL})")
    try:
        import onnx
        opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain == ""), None)
    except ImportError:
        opset = None
    return dict(example_shape=list(example[0].shape), checked_shapes=shapes, max_abs_logit_diff=worst,
                onnxruntime=ort.__version__, opset=opset)


def check_out(model_dir, out_dir) -> Path:
    """The folder to write, refused where it would replace the source or a folder this command did not write."""
    out = Path(out_dir) if out_dir else Path(model_dir).with_name(Path(model_dir).name + "-hf")
    if out.resolve() == Path(model_dir).resolve():
        raise ValueError(f"--out {out} is the classifier folder itself; give another folder")
    if out.exists() and not (out / EXPORT_FILE).exists():
        raise ValueError(f"--out {out} exists and is not a folder `llm-anatomy export` wrote (no {EXPORT_FILE}); "
                         "give a new folder, or remove it first")
    return out


def export_classifier(model_dir, out_dir=None, onnx: bool = False) -> dict:
    """Write the export folder of the classifier in `model_dir` (atomically; default `<model_dir>-hf`) and
    return its export.json."""
    out = check_out(model_dir, out_dir)
    model, tokenizer, meta = load_classifier(model_dir)
    hf = hf_model(model)
    model_cls = portable.CLASSES[model.adapter.arch][1]
    info = dict(source=str(model_dir), arch=model.adapter.arch, model_class=model_cls.__name__,
                logits_shape="[batch, 1]", ffn_widths=model.adapter.ffn_widths(),
                attention_heads=model.adapter.head_counts(), kv_heads=model.adapter.kv_head_counts(),
                kept_heads=meta.get("kept_heads"),
                classifier={k: meta[k] for k in ("max_length", "truncation_side", "padding_side", "precision",
                                                 "pruned_from", "target") if k in meta})
    with atomic_dir(out) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(portable.__file__, tmp / MODELING_FILE)
        tokenizer.padding_side = meta.get("padding_side", "right")
        tokenizer.truncation_side = meta.get("truncation_side", "right")
        tokenizer.model_max_length = meta["max_length"]
        tokenizer.save_pretrained(tmp)
        again = model_cls.from_pretrained(tmp).eval()  # the written files, through the same class
        ids, mask = _probe_batch(tokenizer, PROBES)
        with torch.no_grad():
            diff = float((again(input_ids=ids, attention_mask=mask).logits[:, 0] - model(ids, mask)).abs().max())
        if diff > FROM_PRETRAINED_TOL:
            raise RuntimeError(f"the exported model's logits differ from the classifier's by {diff:.3g} "
                               f"(> {FROM_PRETRAINED_TOL})")
        info["checks"] = dict(from_pretrained=dict(reviews=len(PROBES), max_abs_logit_diff=diff))
        if onnx:
            info["checks"]["onnx"] = export_onnx(again, tokenizer, tmp / ONNX_FILE)
        info["files"] = sorted(p.name for p in tmp.iterdir()) + [EXPORT_FILE]
        write_json(tmp / EXPORT_FILE, info)
    log.info("%s -> %s (%s%s)", model_dir, out, model_cls.__name__, ", ONNX" if onnx else "")
    return info
