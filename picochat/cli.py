"""`picochat`: one command, one subcommand per stage.

Each stage's module exposes `register(subparsers)`, which adds its parser and sets
`func` to the function that runs it. Add a stage by appending its module here.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from picochat import __version__
from picochat.errors import PicochatError

COMMAND_MODULES = [
    "picochat.plan_cli",
    "picochat.tokenizer.cli",
    "picochat.data.cli",
    "picochat.infer.cli",
    "picochat.train.cli",
    "picochat.eval.cli",
    "picochat.lab.cli",
    "picochat.post.cli",
    "picochat.speedrun.cli",
    "picochat.export.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picochat",
        description="Train a chat LLM from scratch: data, tokenizer, pretraining, evals, SFT, RL, inference, chat.",
    )
    parser.add_argument("--version", action="version", version=f"picochat {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except PicochatError as e:
        print(f"picochat {args.command}: {'stopped' if getattr(e, 'exit_status', 2) != 2 else 'error'}: {e}",
              file=sys.stderr)
        sys.exit(getattr(e, "exit_status", 2))  # 2, or a stopped stage's 130/143
    except KeyboardInterrupt:
        print(f"picochat {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
