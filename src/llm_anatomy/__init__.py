"""llm-anatomy: layer and neuron anatomy of fine-tuned transformer classifiers, and retraining-free FFN pruning.

    from llm_anatomy import load_pruned
    model, tokenizer, meta = load_pruned("results/offline/pruned/minilm/flap-50")

loads any classifier folder the pipeline writes (fine-tuned or materialised pruned) on CPU,
or pass device="cuda"; `model(input_ids, attention_mask)` returns logits (> 0: positive).
"""

__version__ = "0.1.0"


def load_pruned(folder, device="cpu"):
    """(model, tokenizer, meta) of a classifier folder; see llm_anatomy.models.load_classifier."""
    from .models import load_classifier  # torch and transformers load only when a model does

    return load_classifier(folder, device)


load_classifier = load_pruned
