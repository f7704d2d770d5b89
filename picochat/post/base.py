"""Runs in and out of post-training: start (or resume) a post-training run from the run it finetunes.

What comes out is a checkpoint in pretraining's format (model.pt, optimizer, meta.json with model_config,
run_config and tokenizer), so `picochat chat` / `serve` / `eval` load it unchanged; its meta adds `stage`
(sft or rl), `from_run` (the checkpoint it started from), and the base run's `dataset` and `train_config`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from picochat.checkpoint import CheckpointError, load_checkpoint, read_meta, resolve_checkpoint, run_dir
from picochat.config import config_to_dict
from picochat.errors import PicochatError
from picochat.model.config import GPTConfig
from picochat.runtime import DTYPES, Runtime, init_runtime, print0
from picochat.tokenizer import Tokenizer
from picochat.train.build import build_model, make_optimizer
from picochat.train.config import LR_FIELDS, TrainConfig
from picochat.train.setup import check_ranges, default_explicit, resume_point, resumed_config


@dataclass
class BaseRun:
    checkpoint: Path  # what the weights were loaded from (the run's own checkpoint on --resume)
    meta: dict
    model: torch.nn.Module
    tokenizer: Tokenizer
    train_config: TrainConfig  # the pretraining config (learning rates, batch, sequence length)
    optimizer_state: dict | None  # None on --resume: the loop restores the run's own
    source: str  # the checkpoint post-training started from: recorded as `from_run`


@dataclass
class PostRun:
    cfg: object  # SFTConfig or RLConfig, merged with the saved one on --resume
    runtime: Runtime
    run_dir: Path
    base: BaseRun
    resume_from: Path | None


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


def base_optimizer_state(path: Path, runtime: Runtime) -> dict | None:
    """This rank's optimizer state of the base checkpoint (its `optim_rank{r}.pt` when sharded), or None,
    saying why, when it was saved by another number of processes."""
    try:
        return load_checkpoint(path, runtime.device, load_optimizer=True)["optimizer"]
    except CheckpointError as e:
        print0(f"warm start: {e}; starting with fresh optimizer moments instead")
        return None


def load_base_run(name_or_path: str, runtime: Runtime, step: int | None = None, resuming: bool = False,
                  warm_start: bool = True) -> BaseRun:
    if not name_or_path:
        raise PicochatError("--from is required: the run (or checkpoint folder) to start from")
    path = resolve_checkpoint(name_or_path, step)
    ckpt = load_checkpoint(path, runtime.device, load_optimizer=False)
    meta = ckpt["meta"]
    model = build_model(GPTConfig(**meta["model_config"]), runtime)
    model.load_state_dict(ckpt["model"], strict=True)
    optimizer_state = base_optimizer_state(path, runtime) if warm_start and not resuming else None
    print0(f"loaded {path} (depth {model.config.depth}, {meta.get('stage', 'base')} run)")
    source = meta["from_run"] if resuming else str(path)
    return BaseRun(path, meta, model, Tokenizer.load(meta["tokenizer"]), train_config_of(meta), optimizer_state, source)


def start_post_run(cfg, explicit: set[str] | None, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> PostRun:
    """Checks, then --resume or a fresh run, the runtime dtype set, then the model built: in that order."""
    check_ranges(cfg, positive, non_negative)
    if cfg.resume and not (cfg.run or cfg.from_run):
        raise PicochatError("--resume needs the run to continue: pass --run NAME")
    runtime = init_runtime(cfg.device, seed=cfg.seed)
    path = run_dir(cfg.run_name())
    resume_from = resume_point(path, cfg.run_name(), cfg.resume, cfg.force, runtime)
    if resume_from is not None:
        explicit = default_explicit(cfg) if explicit is None else explicit
        cfg = resumed_config(cfg, read_meta(resume_from)["run_config"], explicit)
    if cfg.dtype:
        runtime = dataclasses.replace(runtime, dtype=DTYPES[cfg.dtype])  # before any model is built
    base = load_base_run(str(resume_from) if resume_from else cfg.from_run, runtime,
                         None if resume_from else cfg.step, resume_from is not None, getattr(cfg, "warm_start", True))
    return PostRun(cfg, runtime, path, base, resume_from)


def post_optimizer(base: BaseRun, runtime: Runtime, lr_scale: float):
    """The base run's optimizer with its moments (when loaded), LRs × lr_scale, weight decay 0 (nanochat's
    chat_sft.py: SFT warm-starts the moments and drops weight decay)."""
    optimizer = make_optimizer(base.model, dataclasses.replace(base.train_config, weight_decay=0.0), runtime)
    peak_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    if base.optimizer_state is not None:
        try:
            optimizer.load_state_dict(base.optimizer_state)
        except (ValueError, KeyError) as e:
            print0(f"warm start: the optimizer state of {base.checkpoint} does not fit ({e}); fresh moments instead")
    for group, peak in zip(optimizer.param_groups, peak_lrs):
        group["lr"] = group["initial_lr"] = peak * lr_scale
        group["weight_decay"] = group["initial_weight_decay"] = 0.0
    return optimizer


def post_meta(model, cfg, base: BaseRun, stage: str) -> dict:
    """A post-training checkpoint's meta: its own config, and the base run's tokenizer, dataset and config."""
    return {"model_config": dataclasses.asdict(model.config), "run_config": config_to_dict(cfg),
            "train_config": config_to_dict(base.train_config), "tokenizer": base.tokenizer.name,
            "dataset": base.meta.get("dataset", base.train_config.dataset), "stage": stage, "from_run": base.source}
