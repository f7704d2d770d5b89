"""`picochat train`: pretraining from the command line (one flag per TrainConfig field)."""
from __future__ import annotations

import argparse

from picochat.config import add_config_args, config_from_args, explicit_fields
from picochat.runtime import print0, shutdown_runtime
from picochat.train.config import TrainConfig
from picochat.train.loop import exit_status
from picochat.train.pretrain import train


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="pretrain a model from scratch on a dataset (torchrun-ready)",
        description="Pretrain a GPT of the given depth. Unset sizes, horizon, batch and learning rates come "
                    "from the scaling-law plan; the resolved config is printed and saved in "
                    "$PICOCHAT_HOME/runs/RUN/. Multi-GPU: torchrun --nproc_per_node=K -m picochat train ...")
    add_config_args(parser, TrainConfig)
    # torchrun's own parser reads a bare --run as an abbreviation of its --run-path and stops.
    parser.add_argument("--run-name", dest="run", metavar="STR", default=argparse.SUPPRESS,
                        help="the same as --run; use this spelling under torchrun")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TrainConfig, args)
    try:
        state = train(cfg, explicit_fields(args, TrainConfig))
    finally:
        shutdown_runtime()
    bpb = "n/a" if state["val_bpb"] is None else f"{state['val_bpb']:.4f}"
    print0(f"{'stopped' if state['stopped_by'] else 'done'}: step {state['step']}, {state['tokens']:,} tokens, "
           f"{state['train_time']:.1f} s training, val bpb {bpb}")
    return exit_status(state["stopped_by"])
