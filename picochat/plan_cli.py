"""`picochat plan`: print the training plan the scaling laws derive for a depth, before spending GPU time."""
from __future__ import annotations

import argparse
import dataclasses
import json

from picochat.config import add_config_args, config_from_args
from picochat.errors import PicochatError
from picochat.hardware import PEAK_FLOPS
from picochat.model.config import GPTConfig
from picochat.scaling import Plan, ScalingConstants, load_constants, plan_for_config


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
    parser.add_argument("--constants", default=None, metavar="FILE", help="JSON of fitted constants (`picochat fit`) replacing the seed's")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
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
    return 0


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
