"""Inference: the KV-cache engine, the calculator sandbox, the chat CLI and the HTTP server (picochat.infer.server)."""
from picochat.infer.engine import Completion, Engine, PromptTooLongError, SamplingParams, StreamDecoder
from picochat.infer.sandbox import SandboxError, run_calculator

__all__ = ["Completion", "Engine", "PromptTooLongError", "SamplingParams", "SandboxError", "StreamDecoder",
           "run_calculator"]
