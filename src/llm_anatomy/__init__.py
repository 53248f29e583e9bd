"""llm-anatomy: layer and neuron anatomy of fine-tuned transformer classifiers, and retraining-free FFN pruning.

    from llm_anatomy import load_pruned
    model, tokenizer, meta = load_pruned("results/offline/pruned/minilm/flap-50")

loads any classifier folder the pipeline writes (fine-tuned or materialised pruned) on CPU,
or pass device="cuda"; `model(input_ids, attention_mask)` returns logits (> 0: positive).
`load_classifier` is the same call by its general name.
"""

__version__ = "0.1.0"


def load_classifier(folder, device="cpu"):
    """(model, tokenizer, meta) of a classifier folder; see llm_anatomy.models.load_classifier."""
    from .models import load_classifier as load  # torch and transformers load only when a model does

    return load(folder, device)


load_pruned = load_classifier  # the documented entry point for a pruned folder
