"""picochat: train a chat LLM from scratch, measured on steps, FLOPs and wall-clock."""

__version__ = "0.1.0"
