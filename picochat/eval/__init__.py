"""Evaluators: pure functions of a model, a tokenizer and data (they import nothing from training)."""
from picochat.eval.bpb import evaluate_bpb
from picochat.eval.core import CoreResult, TaskResult, evaluate_core

__all__ = ["evaluate_bpb", "evaluate_core", "CoreResult", "TaskResult"]
