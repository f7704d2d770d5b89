"""Runs in and out of post-training: load the run SFT/RL start from, build its optimizer, save new checkpoints.

What comes out is a checkpoint in pretraining's format (model.pt, optim.pt, meta.json with model_config,
run_config and tokenizer), so `picochat chat` / `serve` / `eval` load it unchanged; its meta adds
`stage` (sft or rl) and `from_run` (the checkpoint it started from).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from picochat.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, run_dir, save_checkpoint
from picochat.config import config_to_dict
from picochat.errors import PicochatError
from picochat.model.config import GPTConfig
from picochat.runtime import Runtime, print0
from picochat.tokenizer import Tokenizer
from picochat.train.build import build_model, make_optimizer
from picochat.train.config import LR_FIELDS, TrainConfig
from picochat.train.setup import record_run


@dataclass
class BaseRun:
    checkpoint: Path
    meta: dict
    model: torch.nn.Module
    tokenizer: Tokenizer
    train_config: TrainConfig  # the run's pretraining config (learning rates, batch, sequence length)
    optimizer_state: dict | None


def check_new_run(name: str) -> Path:
    """The output run must not hold checkpoints already (a second SFT would mix two runs' metrics)."""
    path = run_dir(name)
    if list_checkpoints(path):
        raise PicochatError(f"run {name!r} already has checkpoints in {path / 'checkpoints'}; "
                            f"name a new run with --run NEW")
    return path


def train_config_of(meta: dict) -> TrainConfig:
    """The pretraining config saved with a run (post-training runs carry their base's under `train_config`)."""
    saved = meta.get("train_config") or meta.get("run_config") or {}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    missing = [name for name in LR_FIELDS.values() if getattr(cfg, name) is None]
    if missing:
        raise PicochatError(f"the run's meta.json has no resolved {', '.join(missing)}; "
                            f"post-training starts from runs saved by `picochat train`, `sft` or `rl`")
    return cfg


def load_base_run(name_or_path: str, runtime: Runtime, step: int | None = None) -> BaseRun:
    if not name_or_path:
        raise PicochatError("--from is required: the run (or checkpoint folder) to start from")
    path = resolve_checkpoint(name_or_path, step)
    ckpt = load_checkpoint(path, runtime.device, load_optimizer=False)
    meta = ckpt["meta"]
    model = build_model(GPTConfig(**meta["model_config"]), runtime)
    model.load_state_dict(ckpt["model"], strict=True)
    optim_file = path / "optim.pt"  # sharded states (several ranks) are not warm-started from
    optimizer_state = torch.load(optim_file, map_location=runtime.device, weights_only=True) \
        if optim_file.is_file() else None
    print0(f"loaded {path} (depth {model.config.depth}, {meta.get('stage', 'base')} run)")
    return BaseRun(path, meta, model, Tokenizer.load(meta["tokenizer"]), train_config_of(meta), optimizer_state)


def post_optimizer(base: BaseRun, runtime: Runtime, lr_scale: float, warm_start: bool = True):
    """The base run's optimizer with its moments (when saved and `warm_start`), LRs × lr_scale, weight decay 0
    (reference facts, "Post-training": SFT warm-starts the moments, no weight decay)."""
    optimizer = make_optimizer(base.model, dataclasses.replace(base.train_config, weight_decay=0.0), runtime)
    peak_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    if warm_start and base.optimizer_state is not None:
        try:
            optimizer.load_state_dict(base.optimizer_state)
        except (ValueError, KeyError) as e:
            print0(f"optimizer state of {base.checkpoint} does not fit ({e}); starting with fresh moments")
    for group, peak in zip(optimizer.param_groups, peak_lrs):
        group["lr"] = group["initial_lr"] = peak * lr_scale
        group["weight_decay"] = group["initial_weight_decay"] = 0.0
    return optimizer


def record_post_run(cfg, run: Path, runtime: Runtime, stage: str) -> None:
    record_run(cfg, run, runtime, stage)


def save_post_checkpoint(run: Path, step: int, model: torch.nn.Module, optimizer, base: BaseRun, stage: str,
                         run_config, loop_state: dict, keep: int | None = 2, **extra) -> Path:
    meta = {"model_config": dataclasses.asdict(model.config), "run_config": config_to_dict(run_config),
            "train_config": config_to_dict(base.train_config), "tokenizer": base.tokenizer.name,
            "stage": stage, "from_run": str(base.checkpoint), "loop_state": loop_state, **extra}
    return save_checkpoint(run, step, model.state_dict(), optimizer.state_dict(), meta, keep=keep)
