"""Pretraining: the loop (loop.py) and the small helpers it calls, each one idea."""
from picochat.train.config import TrainConfig
from picochat.train.loop import train

__all__ = ["TrainConfig", "train"]
