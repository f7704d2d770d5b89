"""What happens around the steps: the loop state, GC policy, stop signals, the NaN guard."""
from __future__ import annotations

import gc
import math
import signal
import threading
from dataclasses import dataclass

import torch

from picochat.errors import PicochatError
from picochat.train.step import any_rank

GC_COLLECT_EVERY = 5000  # nanochat's base_train.py: a manual collection every 5,000 steps once GC is off


class NonFiniteLossError(PicochatError):
    """The loss became NaN or inf: the run stops, its last good checkpoint untouched."""


@dataclass
class LoopState:
    """The cumulative axes (steps, tokens, FLOPs, wall-clock), plus the last validation score; saved in every checkpoint."""
    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    train_time: float = 0.0  # seconds in training steps; evaluation and sampling excluded
    val_bpb: float | None = None

    def advance(self, seconds: float, tokens: int, flops: float) -> None:
        self.step += 1
        self.tokens += tokens
        self.flops += flops
        self.train_time += seconds


class GcFreeze:
    """Python's cycle collector frozen and disabled after the first step (nanochat dev/LOG.md: ~500 ms
    pauses otherwise), with a manual collection every 5,000 steps; restored at the end."""

    def __init__(self):
        self.frozen = False

    def after_step(self, step: int) -> None:
        if not self.frozen:
            gc.collect()
            gc.freeze()
            gc.disable()
            self.frozen = True
        elif step % GC_COLLECT_EVERY == 0:
            gc.collect()

    def restore(self) -> None:
        if self.frozen:
            gc.unfreeze()
            gc.enable()
            self.frozen = False


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checks it after each step (agreed across ranks),
    saves a checkpoint and returns, instead of dying mid-step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal handlers only install there
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second Ctrl-C does not wait for the step to finish
            raise KeyboardInterrupt
        self.received = signum

    def requested(self, device: torch.device) -> bool:
        return any_rank(self.received is not None, device)


def check_finite_loss(loss: float, step: int, last_checkpoint: str) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"the training loss became {loss} at step {step}; stopping without saving so the last good "
            f"checkpoint ({last_checkpoint}) stays intact. Lower the learning rates (--matrix-lr, --embedding-lr), "
            f"try --dtype float32 to rule out precision, then --resume")
