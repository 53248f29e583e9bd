"""WIP: the loop with stored bf16 weights, with and without the fused FFN input maps (llm_anatomy.fused),
alternating, 3 passes each; prints times, ratio, accuracies and how many predictions differ.

    PYTHONPATH=src .venv/bin/python benchmarks/fused_loop.py results/offline/minilm/finetuned 1000
"""
import copy, sys, time, numpy as np
from llm_anatomy.models import load_classifier, set_threads
from llm_anatomy.batching import encode_reviews
from llm_anatomy.data import read_split
from llm_anatomy.evaluate import inference_model, predict_logits
from llm_anatomy import fused
set_threads(2)
ck, n = sys.argv[1], int(sys.argv[2])
model, tok, meta = load_classifier(ck)
test = read_split("data/processed/offline/test.parquet").iloc[:n]; y = test["label"].to_numpy()
enc = encode_reviews(tok, meta, test["text"]); side = meta.get("padding_side", "right")
a = inference_model(model, "bf16"); b = copy.deepcopy(a); print("swapped", fused.fuse_ffn_inputs(b))
run = lambda m: predict_logits(m, enc, tok.pad_token_id, 32, "bf16", side)
run(a); run(b)
t = {"stored": [], "fused": []}; out = {}
for r in range(3):
    for name, m in ((("stored", a), ("fused", b)) if r % 2 == 0 else (("fused", b), ("stored", a))):
        s = time.perf_counter(); out[name] = run(m); t[name].append(time.perf_counter() - s)
print({k: [round(x, 2) for x in v] for k, v in t.items()}, "ratio", np.median(t["stored"]) / np.median(t["fused"]))
print("acc", ((out["stored"] > 0) == y).mean(), ((out["fused"] > 0) == y).mean(), "differ", int(((out["stored"] > 0) != (out["fused"] > 0)).sum()), "max dlogit", float(np.abs(out["stored"] - out["fused"]).max()))
