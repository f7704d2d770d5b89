"""`picochat export` and `picochat import-hf` (need the `hf` extra: transformers, tokenizers, safetensors)."""
from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass, field

from picochat.config import add_config_args, config_from_args, field_help
from picochat.errors import PicochatError
from picochat.names import plain_name

HF_MODULES = ("transformers", "tokenizers", "safetensors")


@dataclass(frozen=True)
class ExportConfig:
    run: str = field(default="", metadata=field_help("the run to export, a name under $PICOCHAT_HOME/runs"))
    step: int | None = field(default=None, metadata=field_help("checkpoint step; derived: the latest"))
    out: str = field(default="", metadata=field_help("the folder to write (new or empty, unless --force)"))
    dtype: str = field(default="float32", metadata=field_help("weights' dtype", choices=["float32", "bfloat16"]))
    force: bool = field(default=False, metadata=field_help("overwrite the export files in a non-empty --out"))
    max_shard_mb: int = field(default=5000, metadata=field_help("weights above this many MB are split into shards"))


@dataclass(frozen=True)
class ImportConfig:
    run: str = field(default="", metadata=field_help("the new run to create under $PICOCHAT_HOME/runs"))


def require_hf_extra(command: str) -> None:
    missing = [m for m in HF_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise PicochatError(f"`picochat {command}` needs {', '.join(missing)}: pip install -e '.[hf]'")


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export", help="write a run as a Hugging Face model folder (transformers loads it)",
        description="Weights (safetensors), config, modelling code, tokenizer with chat template, generation "
                    "config and model card; load with AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True).")
    add_config_args(export, ExportConfig)
    export.set_defaults(func=export_command)
    back = subparsers.add_parser("import-hf", help="rebuild a picochat run from a `picochat export` folder",
                                 description="Checkpoint and tokenizer, so chat, serve, eval and sft work on the run.")
    back.add_argument("folder", metavar="DIR", help="a folder written by `picochat export`")
    add_config_args(back, ImportConfig)
    back.set_defaults(func=import_command)


def export_command(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExportConfig, args)
    plain_name(cfg.run, "--run")
    if not cfg.out:
        raise PicochatError("--out is required: the folder to write the Hugging Face model into")
    if cfg.max_shard_mb < 1:
        raise PicochatError(f"--max-shard-mb must be at least 1, got {cfg.max_shard_mb}")
    require_hf_extra("export")
    from picochat.export.hf_export import export_run  # noqa: PLC0415  (the optional `hf` extra, loaded only here)

    start = time.perf_counter()
    exported = export_run(cfg.run, cfg.out, cfg.step, cfg.dtype, cfg.force, cfg.max_shard_mb * 10**6)
    print(f"exported {exported.checkpoint} to {exported.folder}: {len(exported.files)} files, "
          f"{exported.size_bytes / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s; load it with "
          f"AutoModelForCausalLM.from_pretrained('{exported.folder}', trust_remote_code=True)")
    return 0


def import_command(args: argparse.Namespace) -> int:
    cfg = config_from_args(ImportConfig, args)
    plain_name(cfg.run, "--run")
    require_hf_extra("import-hf")
    from picochat.export.hf_export import import_hf  # noqa: PLC0415  (the optional `hf` extra, loaded only here)

    checkpoint = import_hf(args.folder, cfg.run)
    print(f"imported {args.folder} as run {cfg.run!r} ({checkpoint}); try `picochat chat --run {cfg.run}`")
    return 0
