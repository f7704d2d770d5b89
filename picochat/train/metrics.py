"""Logging through one small interface: a do-nothing default, JSONL, a console line, wandb.

Loggers are composed once at start (`make_logger`), so the loop calls `logger.log(record)`
and never asks which backends are on. A record is a flat dict with at least the axes of
the three axes: step, tokens, flops, time (training wall-clock, evaluation excluded), loss, lr,
tok_per_sec, mfu; eval steps add val_bpb.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from picochat.runtime import print0

METRICS_FILE = "metrics.jsonl"
REQUIRED_AXES = ("step", "tokens", "flops", "time", "loss", "lr", "tok_per_sec", "mfu")


class Logger:
    """The interface, and the do-nothing logger (non-master ranks, tests)."""

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlLogger(Logger):
    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)  # line-buffered: a crash loses at most one line

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.file.close()


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{secs:02d}"


def progress_line(record: dict, num_iterations: int) -> str:
    parts = [f"step {record['step']:>6d}/{num_iterations} ({100 * record['step'] / max(num_iterations, 1):5.1f}%)",
             f"loss {record['loss']:.4f}", f"lr {record['lr']:.2e}",
             f"{record['tok_per_sec']:,.0f} tok/s", f"mfu {100 * record['mfu']:.1f}%",
             f"{record['flops']:.2e} flops", f"time {format_duration(record['time'])}"]
    parts += [shown.format(record[key]) for key, shown in SHOWN_WHEN_PRESENT if isinstance(record.get(key), (int, float))]
    return " | ".join(parts)


# what a stage or an evaluation adds to a record, shown on the console line when present
SHOWN_WHEN_PRESENT = (("val_bpb", "val bpb {:.4f}"), ("val_tokens", "over {:,} tokens"), ("core", "CORE {:.4f}"),
                      ("chatcore", "ChatCORE {:.4f}"), ("mean_reward", "reward {:.3f}"),
                      ("heldout_pass@k", "held-out pass@k {:.3f}"), ("tok_per_peak_gflop", "{:.2f} tok/s per peak GFLOP/s"))
EVALUATION_FIELDS = ("val_bpb", "core", "chatcore", "heldout_pass@k")


class ConsoleLogger(Logger):
    """A progress line every `every` steps, and always on eval steps and the last step."""

    def __init__(self, num_iterations: int, every: int = 1):
        self.num_iterations, self.every = num_iterations, max(every, 1)

    def log(self, record: dict) -> None:
        step = record["step"]
        if record["loss"] is None:  # the step-0 evaluation, which the loop prints itself
            return
        if step % self.every == 0 or step == self.num_iterations or any(k in record for k in EVALUATION_FIELDS):
            print0(progress_line(record, self.num_iterations))


class WandbLogger(Logger):
    def __init__(self, project: str, run_name: str, config: dict):
        import wandb  # noqa: PLC0415  (optional dependency, imported only when asked for)
        self.run = wandb.init(project=project, name=run_name, config=config)

    def log(self, record: dict) -> None:
        self.run.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


class MultiLogger(Logger):
    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def log(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


def make_logger(run: Path, run_name: str, config: dict, num_iterations: int, is_master: bool,
                use_wandb: bool = False, console_every: int = 1) -> Logger:
    if not is_master:
        return Logger()
    loggers: list[Logger] = [JsonlLogger(run / METRICS_FILE), ConsoleLogger(num_iterations, console_every)]
    if use_wandb and wandb_available():
        loggers.append(WandbLogger("picochat", run_name, config))
    elif use_wandb:
        print0("--wandb was asked for but wandb is not installed (pip install wandb); logging to metrics.jsonl only")
    return MultiLogger(loggers)


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop records past a resumed checkpoint's step, so the file holds one record per step."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= after_step]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
