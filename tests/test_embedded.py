"""The two embedded pretrained models load (when their packages are installed) with the
architecture the project expects, and run through the classifier."""
import pytest
import torch

from llm_anatomy.batching import pad
from llm_anatomy.models import SentimentClassifier, embedded_available, load_backbone, load_tokenizer

EXPECTED = {"minilm": ("bert", 6, 384, 1536), "smollm2": ("llama", 30, 576, 1536)}


@pytest.mark.embedded
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_embedded_model_loads(name):
    if not embedded_available(name):
        pytest.skip(f"embedded package for {name} not installed (see README: make setup)")
    tok = load_tokenizer(f"embedded:{name}")
    model = SentimentClassifier(load_backbone(f"embedded:{name}", tok)).eval()
    arch, layers, hidden, ffn = EXPECTED[name]
    assert (model.adapter.arch, model.adapter.num_layers, model.adapter.hidden_size) == (arch, layers, hidden)
    assert model.adapter.ffn_widths() == [ffn] * layers
    assert model.adapter.value_vectors(0).dtype == torch.float32
    ids, mask = pad([tok("A fine film.")["input_ids"], tok("Awful, boring and far too long.")["input_ids"]],
                    tok.pad_token_id)
    with torch.no_grad():
        states = model.adapter.hidden_states(ids, mask)
        logits = model(ids, mask)
    assert len(states) == layers + 1 and torch.isfinite(logits).all()
    # pretrained weights, not a fresh init: trained norm scales have moved away from 1
    norms = [p for n, p in model.backbone.named_parameters() if "norm" in n.lower() and n.endswith("weight")]
    assert norms and all(not torch.allclose(p, torch.ones_like(p)) for p in norms)
