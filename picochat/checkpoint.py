"""Atomic checkpoints and run directories: plain functions, weights plus a readable meta.json.

A checkpoint is `runs_dir()/RUN/checkpoints/step_XXXXXX/` holding `model.pt`, the optimizer
(`optim.pt`, or `optim_rank{r}.pt` per rank when its state is sharded), each rank's RNG
states (`rng_rank{r}.pt`) and `meta.json` (model config, run config, loop state, loader
cursors). Everything is written into `.tmp-step_XXXXXX/` and renamed at the end, so a crash
mid-write leaves the previous checkpoint loadable; meta.json is written last and marks a
complete checkpoint.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from picochat.errors import PicochatError
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.runtime import runs_dir
from picochat.tokenizer import Tokenizer

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step_(\d{6,})$")
TMP_PREFIX = ".tmp-"


class CheckpointError(PicochatError):
    """A checkpoint or run that cannot be found or read."""


def run_dir(name: str) -> Path:
    return runs_dir() / name


def checkpoint_path(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / f"step_{step:06d}"


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints (meta.json present), oldest first; temp dirs are not listed."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / "meta.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run: Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1] if found else None


def remove_stale_temp_dirs(run: Path) -> None:
    root = Path(run) / CHECKPOINTS
    if root.is_dir():
        for p in root.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run: Path, keep: int) -> None:
    for old in list_checkpoints(run)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(run: Path, step: int, model_state: dict, optimizer_state: dict, meta: dict,
                    optimizer_sharded: bool = False, keep: int | None = None) -> Path:
    """Write this step's checkpoint atomically; every rank calls it (a collective when distributed).

    Rank 0 writes the model and meta.json; each rank writes its RNG states and, when the
    optimizer state is sharded, its own `optim_rank{r}.pt`.
    """
    rank, world = _rank_world()
    final = checkpoint_path(run, step)
    tmp = final.with_name(TMP_PREFIX + final.name)
    if rank == 0:
        remove_stale_temp_dirs(run)
        tmp.mkdir(parents=True)
    _barrier()
    torch.save(rng_states(), tmp / f"rng_rank{rank}.pt")
    if optimizer_sharded:
        torch.save(optimizer_state, tmp / f"optim_rank{rank}.pt")
    if rank == 0:
        torch.save(model_state, tmp / "model.pt")
        if not optimizer_sharded:
            torch.save(optimizer_state, tmp / "optim.pt")
    _barrier()
    if rank == 0:
        meta = {**meta, "step": step, "world_size": world, "optimizer_sharded": optimizer_sharded}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        if keep is not None:
            prune_checkpoints(run, keep)
    _barrier()
    return final


def read_meta(path: Path) -> dict:
    meta_file = Path(path) / "meta.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no meta.json); "
                              f"list the run's checkpoints with: ls {Path(path).parent}")
    return json.loads(meta_file.read_text())


def load_checkpoint(path: Path, device: torch.device | str = "cpu", load_optimizer: bool = True) -> dict:
    """{"meta", "model", "optimizer" (this rank's, or None), "rng" (this rank's, or None)}."""
    path = Path(path)
    meta = read_meta(path)
    rank, world = _rank_world()
    model = torch.load(path / "model.pt", map_location=device, weights_only=True)
    optimizer, rng = None, None
    if load_optimizer:
        if meta.get("optimizer_sharded") and meta.get("world_size") != world:
            raise CheckpointError(
                f"{path} holds optimizer state sharded over {meta['world_size']} processes but this run has {world}; "
                f"resume with --nproc_per_node={meta['world_size']}")
        name = f"optim_rank{rank}.pt" if meta.get("optimizer_sharded") else "optim.pt"
        optimizer = torch.load(path / name, map_location=device, weights_only=True)
        rng_file = path / f"rng_rank{rank}.pt"
        rng = torch.load(rng_file, weights_only=False) if rng_file.is_file() else None
    return {"meta": meta, "model": model, "optimizer": optimizer, "rng": rng}


def resolve_checkpoint(name_or_path: str | Path, step: int | None = None) -> Path:
    """A checkpoint dir, a run dir, or a run name under runs_dir() -> one checkpoint dir."""
    p = Path(name_or_path).expanduser()
    if (p / "meta.json").is_file() and step is None:
        return p
    run = p if (p / CHECKPOINTS).is_dir() else run_dir(str(name_or_path))
    if step is not None:
        found = checkpoint_path(run, step)
        if not (found / "meta.json").is_file():
            steps = [c.name for c in list_checkpoints(run)]
            raise CheckpointError(f"run {run} has no checkpoint at step {step}; it has: {', '.join(steps) or 'none'}")
        return found
    found = latest_checkpoint(run)
    if found is None:
        runs = sorted(d.name for d in runs_dir().glob("*") if d.is_dir()) if runs_dir().is_dir() else []
        raise CheckpointError(f"no checkpoint found for {name_or_path!r} (looked in {run / CHECKPOINTS}); "
                              f"runs under {runs_dir()}: {', '.join(runs) or 'none'}; create one with `picochat train`")
    return found


def load_model_from_run(name_or_path: str | Path, runtime, step: int | None = None):
    """(model, tokenizer, meta) for eval/chat/serve: rebuilds GPTConfig from meta, loads the tokenizer named there."""
    path = resolve_checkpoint(name_or_path, step)
    ckpt = load_checkpoint(path, runtime.device, load_optimizer=False)
    meta = ckpt["meta"]
    with torch.device("meta"):
        model = GPT(GPTConfig(**meta["model_config"]), runtime.dtype)
    model.to_empty(device=runtime.device)
    model.init_weights()  # rebuilds non-persistent buffers (rotary tables); weights are overwritten next
    model.load_state_dict(ckpt["model"], strict=True)
    model.eval()
    return model, Tokenizer.load(meta["tokenizer"]), meta
