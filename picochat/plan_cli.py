"""`picochat plan`: print the training plan the scaling laws derive for a depth, before spending GPU time."""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from picochat.config import add_config_args, config_from_args
from picochat.errors import PicochatError
from picochat.hardware import PEAK_FLOPS
from picochat.model.config import GPTConfig
from picochat.runtime import DTYPES
from picochat.scaling import Plan, ScalingConstants, load_constants, plan_for_config
from picochat.train.memory import HEADROOM, available_memory, estimate_memory, fit_by_memory_model, gib


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="show the model shape, tokens, batch, steps, WD, LRs and time the scaling laws give a depth",
        description="Derive the whole training plan for a model depth from the scaling laws (see picochat/scaling.py).")
    add_config_args(parser, GPTConfig, skip=("softcap", "rope_base"))
    parser.add_argument("--ratio", type=float, default=None, metavar="R", help="tokens per scaling param (default: 10.5, or the constants file's)")
    parser.add_argument("--total-batch-size", type=int, default=None, metavar="TOKENS", help="tokens per step (default: derived, Power Lines)")
    parser.add_argument("--num-iterations", type=int, default=None, metavar="STEPS", help="optimizer steps (default: derived, tokens / batch)")
    parser.add_argument("--target-flops", type=float, default=None, metavar="F",
                        help="the horizon from a FLOP budget: steps = F / (FLOPs per token x batch), to the nearest step")
    parser.add_argument("--gpu", default="H100", help=f"GPU for the time estimate, one of {', '.join(PEAK_FLOPS)} (default: H100)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed for the estimate (default: 0.4)")
    parser.add_argument("--n-gpus", type=int, default=1, metavar="N", help="GPUs sharing the run (default: 1)")
    parser.add_argument("--constants", default=None, metavar="FILE", help="JSON of fitted constants (`picochat fit`) replacing the published defaults")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--memory", action="store_true",
                        help="also the memory one rank needs (weights, gradients, optimizer, activations) and the "
                             "largest micro-batch that fits, as --device-batch-size auto picks it off CUDA")
    parser.add_argument("--device-batch-size", type=int, default=32, metavar="ROWS", help="with --memory (default: 32)")
    parser.add_argument("--dtype", default="bfloat16", choices=list(DTYPES), help="with --memory (default: bfloat16)")
    parser.add_argument("--memory-gib", type=float, default=None, metavar="GIB",
                        help="with --memory: memory to fit into (default: what this machine has free)")
    parser.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    cfg = config_from_args(GPTConfig, args)  # GPTConfig.validate raises ModelConfigError on a bad shape
    constants = load_constants(args.constants) if args.constants else ScalingConstants()
    if args.ratio is not None:
        if args.ratio <= 0:
            raise PicochatError(f"--ratio must be positive, got {args.ratio}")
        constants = dataclasses.replace(constants, ratio=args.ratio)
    if args.target_flops is not None and (args.ratio is not None or args.num_iterations is not None):
        raise PicochatError("--target-flops sets the horizon; drop --ratio and --num-iterations (or --target-flops)")
    plan = plan_for_config(cfg, constants, args.total_batch_size, args.num_iterations, args.target_flops)
    hours = plan.estimated_hours(args.gpu, args.mfu, args.n_gpus)
    if args.json:
        estimate = {"gpu": args.gpu, "mfu": args.mfu, "n_gpus": args.n_gpus, "hours": hours}
        print(json.dumps({**plan.to_dict(), "estimate": estimate}, indent=2))
    else:
        print(format_plan(plan, f"{hours:.2f} h on {args.n_gpus}x {args.gpu} at {args.mfu:.0%} MFU"))
    if args.memory:
        print(format_memory(plan, args))
    return 0


def format_memory(plan: Plan, args: argparse.Namespace) -> str:
    if args.device_batch_size < 1:
        raise PicochatError(f"--device-batch-size {args.device_batch_size} must be at least 1")
    dtype, seq_len, world = DTYPES[args.dtype], plan.config.max_seq_len, args.n_gpus
    free = int(args.memory_gib * 2**30) if args.memory_gib is not None else available_memory(torch.device("cpu"))
    where = f"{args.memory_gib:g} GiB" if args.memory_gib is not None else f"this machine's {gib(free)} free"
    estimate = estimate_memory(plan.config, args.device_batch_size, seq_len, dtype, world)
    lines = [f"memory per rank, {args.device_batch_size} x {seq_len} tokens per micro-batch, {args.dtype}, "
             f"{world} rank(s) (eager; compile saves activations):", *estimate.lines()]
    try:
        fitted = fit_by_memory_model(plan.config, plan.total_batch_size, seq_len, dtype, world, free)
        lines.append(f"largest micro-batch in {where} ({HEADROOM:.0%} of it): {fitted} rows, "
                     f"{plan.total_batch_size // (fitted * seq_len * world)} accumulation steps")
    except PicochatError as refusal:
        lines.append(f"in {where}: {refusal}")
    return "\n".join(lines)


def format_plan(plan: Plan, estimate: str) -> str:
    c, k = plan.config, plan.constants
    rows = [
        ("model", f"d{c.depth}: width {c.width}, {c.n_heads} heads ({c.kv_heads} kv) x {c.head_dim}, "
                  f"vocab {c.vocab_size} (padded {c.padded_vocab_size})"),
        ("context", f"{c.max_seq_len} tokens, windows {c.window_pattern} -> {sorted(set(c.window_sizes()))}"),
        *((f"params {group}", f"{n:,}") for group, n in plan.params.items()),
        ("scaling params", f"{plan.scaling_params:,} (matrix + lm_head)"),
        ("FLOPs/token", f"{plan.flops_per_token:.4g}"),
        ("target tokens", f"{plan.target_tokens:,} (" + (f"FLOP budget {plan.target_flops:.4g} / FLOPs per token)"
                                                         if plan.target_flops else f"{k.ratio} x scaling params)")),
        ("total batch", f"{plan.total_batch_size:,} tokens (2^{plan.total_batch_size.bit_length() - 1})"
         if plan.total_batch_size & (plan.total_batch_size - 1) == 0 else f"{plan.total_batch_size:,} tokens"),
        ("steps", f"{plan.num_steps:,} ({plan.tokens:,} tokens trained)"),
        ("total FLOPs", f"{plan.total_flops:.4g}"),
        ("weight decay", f"{plan.weight_decay:.4f}"),
        *((f"lr {group}", f"{lr:.5g}") for group, lr in plan.learning_rates.items()),
        ("schedule", f"warm-up {plan.warmup_steps} steps, warm-down last {plan.warmdown_steps} steps "
                     f"to {k.final_lr_fraction:.0%} of the LR"),
        ("muon momentum", f"{k.muon_momentum_start} -> {k.muon_momentum_peak} over {k.muon_momentum_ramp_steps} steps, "
                          f"{k.muon_momentum_warmdown} in warm-down"),
        ("estimated time", estimate),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
