"""llm-anatomy: layer and neuron anatomy of fine-tuned transformer classifiers, and retraining-free FFN pruning."""

__version__ = "0.1.0"
