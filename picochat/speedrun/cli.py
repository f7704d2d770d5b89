"""`picochat speedrun --preset cpu|d12|gpt2`: every stage in order, each skipped when its outputs exist."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from picochat.errors import PicochatError
from picochat.eval.core_data import default_bundle_dir
from picochat.runtime import print0
from picochat.speedrun.presets import PRESETS, Preset, get_preset
from picochat.speedrun.runner import format_summary, load_state, run_speedrun
from picochat.speedrun.stages import STAGE_NAMES, Context, choose_dataset, network_reachable
from picochat.tasks import tasks_dir


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "speedrun", help="the whole pipeline in one command: data, tokenizer, pretraining, evals, SFT, chat, report",
        description="Run every stage in order: " + ", ".join(STAGE_NAMES) + ". A stage whose outputs exist is "
                    "skipped, so an interrupted speedrun continues where it stopped when run again. Presets: "
                    + "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values()) + ".")
    parser.add_argument("--preset", required=True, metavar="NAME", help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--run", default=None, help="run name (default: speedrun-PRESET); the SFT run is RUN-sft")
    parser.add_argument("--dataset", default=None,
                        help="an existing dataset to train on (default: climbmix when reachable; cpu: else pystdlib)")
    parser.add_argument("--dry-run", action="store_true", help="print what each stage would run, run nothing")
    parser.add_argument("--from-stage", default=None, metavar="STAGE",
                        help=f"run this stage and every later one again ({', '.join(STAGE_NAMES)})")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu for every stage (default: autodetect)")
    parser.add_argument("--core-bundle", default=None, metavar="DIR",
                        help="CORE bundle (default: $PICOCHAT_HOME/eval_bundle; CORE is skipped when absent)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="chat-task data (gsm8k/, arc/, mmlu/, humaneval/) for SFT and chat evals "
                             "(default: $PICOCHAT_HOME/tasks when present; else generated tasks only)")
    parser.set_defaults(func=run)


def gpu_processes(preset: Preset, device: str | None, dry_run: bool) -> int:
    """How many processes torchrun starts: one per visible GPU, up to the preset's count."""
    if preset.gpus == 0:
        return 1
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dry_run and visible == 0:
        return preset.gpus
    if visible == 0 or device not in (None, "cuda"):
        raise PicochatError(f"preset {preset.name!r} trains on {preset.gpus} CUDA GPUs under torchrun and this "
                            f"machine has none visible; use --preset cpu here (or --dry-run to see the commands)")
    if visible < preset.gpus:
        print0(f"preset {preset.name!r} is sized for {preset.gpus} GPUs; {visible} visible: torchrun starts "
               f"{visible} processes (gradient accumulation keeps the batch, the run takes longer)")
    return min(visible, preset.gpus)


def build_context(args: argparse.Namespace) -> Context:
    preset = get_preset(args.preset)
    run_name = args.run or f"speedrun-{preset.name}"
    nproc = gpu_processes(preset, args.device, args.dry_run)
    probe_ctx = Context(preset, run_name, dataset="")
    saved = load_state(probe_ctx).get("dataset")
    if saved and args.dataset and args.dataset != saved:
        raise PicochatError(f"run {run_name!r} was started on dataset {saved!r}; drop --dataset to continue it, "
                            f"or start another with --run NEW")
    offline_dry_run = args.dry_run and not preset.offline_fallback  # show the download instead of refusing
    dataset, why = (saved, f"dataset {saved!r} (chosen when this run started)") if saved else \
        choose_dataset(preset, args.dataset, probe=(lambda: True) if offline_dry_run else network_reachable)
    print0(f"speedrun {preset.name} ({preset.summary}); run {run_name!r}; {why}")
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else (tasks_dir() if tasks_dir().is_dir() else None)
    bundle = Path(args.core_bundle).expanduser() if args.core_bundle else default_bundle_dir()
    return Context(preset, run_name, dataset, nproc=nproc, device=args.device, core_bundle=bundle, data_dir=data_dir)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    ctx = build_context(args)
    state = run_speedrun(ctx, from_stage=args.from_stage, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    print0(format_summary(state))
    print0(f"speedrun finished in {time.monotonic() - started:.0f}s. Report cards: {ctx.run_dir / 'report'} and "
           f"{ctx.sft_dir / 'report'}. Chat with the result:\n"
           f"  picochat chat --run {ctx.sft_run} -p \"Spell the word 'apple'.\"\n"
           f"  picochat chat --run {ctx.sft_run}        (interactive)\n"
           f"  picochat serve --run {ctx.sft_run}       (web chat)")
    return 0
