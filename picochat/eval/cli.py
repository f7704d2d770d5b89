"""`picochat eval bpb|core`: measure a trained run (torchrun-ready; items and batches split by rank)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch.distributed as dist

from picochat.checkpoint import CHECKPOINTS, load_model_from_run, resolve_checkpoint
from picochat.config import add_config_args, config_from_args
from picochat.data.dataset import open_dataset
from picochat.errors import PicochatError
from picochat.eval.bpb import SplitBpb
from picochat.eval.chat_cli import register_chat
from picochat.eval.config import BpbEvalConfig, CoreEvalConfig
from picochat.eval.core import evaluate_core, format_core_table, write_core_results
from picochat.eval.core_data import default_bundle_dir, load_bundle, select_tasks
from picochat.eval.core_download import ensure_bundle
from picochat.runtime import init_runtime, print0, shutdown_runtime


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a trained run: bits per byte, CORE",
                                   description="Evaluate a run's latest (or --step) checkpoint.")
    stages = parser.add_subparsers(dest="eval_command", metavar="EVAL", required=True)
    bpb = stages.add_parser("bpb", help="bits per byte on the run's (or --dataset's) split (tokenizer-independent loss)",
                            description="Summed loss over a token budget / (ln 2 x UTF-8 bytes of the targets).")
    add_config_args(bpb, BpbEvalConfig)
    bpb.set_defaults(func=run_bpb)
    core = stages.add_parser("core", help="the CORE metric (DCLM's 22 tasks), per-task CSV/JSON in the run dir",
                             description="Few-shot accuracy per task, centered by its random baseline; CORE = "
                                         "their mean over the tasks present. Get the bundle with --download.")
    add_config_args(core, CoreEvalConfig)
    core.set_defaults(func=run_core)
    register_chat(stages)


def require_run(run: str) -> None:
    if not run:
        raise PicochatError("--run is required: the name of a run under $PICOCHAT_HOME/runs (see `picochat train`)")


def run_directory(run: str, step: int | None) -> Path:
    checkpoint = resolve_checkpoint(run, step)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint


def run_bpb(args: argparse.Namespace) -> int:
    cfg = config_from_args(BpbEvalConfig, args)
    require_run(cfg.run)
    runtime = init_runtime(cfg.device)
    try:
        model, tokenizer, meta = load_model_from_run(cfg.run, runtime, cfg.step)
        dataset = dataset_of(cfg, meta)
        batch_size = cfg.batch_size or meta["run_config"].get("device_batch_size") or 8
        result = SplitBpb(open_dataset(dataset), tokenizer, cfg.split, batch_size, meta["model_config"]["max_seq_len"],
                          cfg.tokens, runtime.rank, runtime.world_size, runtime.device)(model)
    finally:
        shutdown_runtime()
    if cfg.json:
        print0(json.dumps({"bpb": result.bpb, "tokens": result.tokens, "whole_split": result.whole_split,
                           "split": cfg.split, "dataset": dataset}))
    else:
        print0(f"{cfg.run}: {dataset} {cfg.split} bpb {result.bpb:.4f} over {result.describe(cfg.split)}")
    return 0


def dataset_of(cfg: BpbEvalConfig, meta: dict) -> str:
    """--dataset, else the dataset the run (or, post-trained, its base run) was trained on."""
    dataset = cfg.dataset or meta.get("dataset") or (meta.get("train_config") or {}).get("dataset")
    if not dataset:
        raise PicochatError(f"run {cfg.run!r} does not record its dataset; name one with --dataset NAME "
                            f"(see `picochat data list`)")
    return dataset


def bundle_directory(cfg: CoreEvalConfig) -> Path:
    """--bundle, else $PICOCHAT_HOME/eval_bundle; with --download, rank 0 fetches it if absent."""
    bundle = Path(cfg.bundle).expanduser() if cfg.bundle else default_bundle_dir()
    if cfg.download:
        if not dist.is_initialized() or dist.get_rank() == 0:
            ensure_bundle(bundle)
        if dist.is_initialized():
            dist.barrier()
    return bundle


def print_to_stderr(line: str) -> None:
    """Progress under --json: stdout holds only the JSON object."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(line, file=sys.stderr, flush=True)


def run_core(args: argparse.Namespace) -> int:
    cfg = config_from_args(CoreEvalConfig, args)
    require_run(cfg.run)
    tasks = [t.strip() for t in cfg.tasks.split(",") if t.strip()] if cfg.tasks else None
    runtime = init_runtime(cfg.device)
    try:
        bundle = bundle_directory(cfg)
        select_tasks(load_bundle(bundle), tasks)  # a bad bundle or task name fails before the model loads
        model, tokenizer, _ = load_model_from_run(cfg.run, runtime, cfg.step)
        result = evaluate_core(model, tokenizer, bundle, max_per_task=cfg.max_per_task, tasks=tasks,
                               device=runtime.device, batch_tokens=cfg.batch_tokens,
                               log=print_to_stderr if cfg.json else print0)
    finally:
        shutdown_runtime()
    if runtime.is_master:
        csv_path, json_path = write_core_results(result, run_directory(cfg.run, cfg.step))
        print(json.dumps(result.to_dict()) if cfg.json else
              f"{format_core_table(result)}\nwrote {csv_path} and {json_path}", flush=True)
    return 0
