"""`picochat export` and `picochat import-hf`: a run's checkpoint to a Hugging Face folder, and back."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from picochat.checkpoint import load_model_from_run, resolve_checkpoint, run_dir, save_checkpoint
from picochat.export.hf_config import (ExportError, check_supported, generation_config, gpt_config_from_hf,
                                       hf_config)
from picochat.export.model_card import model_card
from picochat.export.tokenizer_files import read_tokenizer_files, write_tokenizer_files
from picochat.export.weights import DEFAULT_SHARD_BYTES, load_weights, save_weights
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.errors import PicochatError
from picochat.runtime import Runtime, tokenizers_dir
from picochat.tokenizer import Tokenizer
from picochat.tokenizer.bpe import load_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODELLING_FILES = ("configuration_picochat.py", "modeling_picochat.py")
PROVENANCE_KEYS = ("run_config", "train_config", "tokenizer", "dataset", "stage", "from_run", "step")


@dataclass
class Exported:
    folder: Path
    checkpoint: Path
    files: list[Path]

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def expected_shapes(cfg: GPTConfig) -> dict[str, torch.Size]:
    """The state dict a GPT of this shape has (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {name: t.shape for name, t in GPT(cfg).state_dict().items()}


def check_state(state: dict, cfg: GPTConfig, source: str) -> None:
    expected = expected_shapes(cfg)
    wrong = sorted(set(state) ^ set(expected)) or [n for n in expected if state[n].shape != expected[n]]
    if wrong:
        raise ExportError(f"{source}: the weights do not fit the recorded model shape "
                          f"(first mismatches: {', '.join(wrong[:4])}); export from a complete picochat checkpoint")


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out} exists and is not empty; name a new folder, or pass --force to overwrite "
                          f"the export files in it")


def provenance(meta: dict, checkpoint: Path) -> dict:
    """What import-hf needs to rebuild a run that eval and sft accept (configs, tokenizer and dataset names)."""
    kept = {k: meta[k] for k in PROVENANCE_KEYS if k in meta}
    return json.loads(json.dumps({**kept, "checkpoint": str(checkpoint)}, default=str))


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


def export_run(run: str, out: Path, step: int | None = None, dtype: str = "float32", force: bool = False,
               max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Exported:
    """Write the run's checkpoint as a Hugging Face folder; files are staged beside `out`, then moved in."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out).expanduser()
    check_out(out, force)
    checkpoint = resolve_checkpoint(run, step)
    meta = json.loads((checkpoint / "meta.json").read_text())
    check_supported(meta["model_config"], f"run {run!r}")  # before the model is built from it
    model, tok, meta = load_model_from_run(checkpoint, Runtime(torch.device("cpu"), torch.float32))
    cfg = model.config
    tok.check_vocab(cfg.vocab_size)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_weights(model.state_dict(), staging, DTYPES[dtype], max_shard_bytes)
        write_json(staging / "config.json", hf_config(cfg, dtype, tok.special_ids, provenance(meta, checkpoint)))
        write_json(staging / "generation_config.json", generation_config(tok.special_ids))
        write_tokenizer_files(tok, staging, cfg.max_seq_len)
        for name in MODELLING_FILES:
            (staging / name).write_text(resources.files("picochat.export").joinpath("hf_files", name).read_text())
        (staging / "README.md").write_text(model_card(Path(run).name, checkpoint, meta, cfg, dtype))
        files = move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(out, checkpoint, files)


def move_into(staging: Path, out: Path) -> list[Path]:
    """Move the staged files into `out`, first removing weight files a previous export left (other shards)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    moved = []
    for file in sorted(staging.iterdir()):
        file.replace(out / file.name)
        moved.append(out / file.name)
    return moved


def check_new_run(run: str) -> Path:
    """The run import-hf creates must not hold checkpoints already."""
    try:
        existing = resolve_checkpoint(run)
    except PicochatError:
        return run_dir(run)
    raise ExportError(f"run {run!r} already has a checkpoint ({existing}); name a new run with --run NEW")


def import_tokenizer(folder: Path, recorded_name: str | None, run: str) -> Tokenizer:
    """The export's tokenizer under its recorded name, reusing an identical one already there; a different
    tokenizer of that name is left alone and this one is saved under the run's name."""
    name = recorded_name or run
    tok = read_tokenizer_files(folder, name)
    if (tokenizers_dir() / name).is_dir():
        present = load_tokenizer(tokenizers_dir() / name)
        if present.mergeable_ranks == tok.mergeable_ranks and present.pattern == tok.pattern:
            return present
        tok = read_tokenizer_files(folder, run)
    tok.save(tokenizers_dir() / tok.name)
    return tok


def import_hf(folder: Path, run: str) -> Path:
    """Rebuild a picochat run (checkpoint + tokenizer) from an export folder; returns the checkpoint path."""
    folder = Path(folder).expanduser()
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ExportError(f"{folder} has no config.json; point at a folder written by `picochat export`")
    config = json.loads(config_path.read_text())
    cfg = gpt_config_from_hf(config, str(folder))
    target = check_new_run(run)
    state = load_weights(folder)
    check_state(state, cfg, str(folder))
    recorded = config["picochat"]
    tok = import_tokenizer(folder, recorded.get("tokenizer"), run)
    tok.check_vocab(cfg.vocab_size)
    meta = {**{k: v for k, v in recorded.items() if k in PROVENANCE_KEYS and k != "step"},
            "model_config": recorded["model_config"], "tokenizer": tok.name, "imported_from": str(folder.resolve())}
    return save_checkpoint(target, int(recorded.get("step") or 0), state, {}, meta)
