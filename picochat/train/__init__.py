"""Training: the one loop (loop.py) every stage runs, pretraining (pretrain.py), and the helpers they call."""
from picochat.train.config import TrainConfig
from picochat.train.pretrain import train

__all__ = ["TrainConfig", "train"]
