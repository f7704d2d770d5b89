"""`picochat sft` and `picochat rl`: post-training from the command line (one flag per config field)."""
from __future__ import annotations

import argparse

from picochat.config import add_config_args, config_from_args, explicit_fields
from picochat.post.config import RLConfig, SFTConfig
from picochat.post.rl import rl
from picochat.post.sft import sft
from picochat.runtime import print0, shutdown_runtime
from picochat.train.loop import exit_status


def _add_from_alias(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_run", metavar="RUN", default=argparse.SUPPRESS,
                        help="the same as --from-run")


def sft_command(args: argparse.Namespace) -> int:
    try:
        result = sft(config_from_args(SFTConfig, args), explicit_fields(args, SFTConfig))
    finally:
        shutdown_runtime()
    print0(f"{'stopped' if result['stopped_by'] else 'done'}: step {result['step']}, "
           f"{result['tok_per_sec']:,.0f} tok/s; saved {result['checkpoint']}")
    return exit_status(result["stopped_by"])


def rl_command(args: argparse.Namespace) -> int:
    try:
        result = rl(config_from_args(RLConfig, args), explicit_fields(args, RLConfig))
    finally:
        shutdown_runtime()
    rewards = result["rewards"]
    change = f"mean reward {rewards[0]:.3f} -> {rewards[-1]:.3f}" if rewards else "no step run"
    print0(f"{'stopped' if result['stopped_by'] else 'done'}: step {result['step']}, {change}; "
           f"saved {result['checkpoint']}")
    return exit_status(result["stopped_by"])


def register(subparsers) -> None:
    sft_parser = subparsers.add_parser(
        "sft", help="supervised finetuning of a run on a mixture of conversations",
        description="Finetune a pretrained run on a mixture (built-in `default` or `offline`, or a YAML/JSON file) "
                    "and save a new run that `picochat chat` and `serve` load. Sequence length, batch and learning "
                    "rates are inherited from the base run unless given.")
    add_config_args(sft_parser, SFTConfig)
    _add_from_alias(sft_parser)
    sft_parser.set_defaults(func=sft_command)
    rl_parser = subparsers.add_parser(
        "rl", help="reinforcement learning on a task with a checkable answer (GSM8K, arithmetic, spelling)",
        description="On-policy RL: k samples per problem with the calculator live, reward 1 for a correct final "
                    "answer, advantage = reward - group mean; logs mean reward and pass@k to metrics.jsonl.")
    add_config_args(rl_parser, RLConfig)
    _add_from_alias(rl_parser)
    rl_parser.set_defaults(func=rl_command)
