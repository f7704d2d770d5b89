"""Atomic, verified checkpoints and run directories: plain functions, weights plus a readable meta.json.

A checkpoint is `runs_dir()/RUN/checkpoints/step_XXXXXX/` holding `model.pt`, the optimizer
(`optim.pt`, or `optim_rank{r}.pt` per rank when its state is sharded), each rank's RNG
states (`rng_rank{r}.pt`) and `meta.json` (model config, run config, loop state, loader
cursors, the tokenizer's fingerprint, and the size and sha256 of every other file). Everything is
written into `.tmp-step_XXXXXX/` and renamed at the end, so a crash mid-write leaves the previous
checkpoint loadable; meta.json is written last and marks a complete checkpoint.

Loading executes no code (every file is read with `weights_only=True`; RNG states are stored as
plain lists and tensors) and checks each file against meta.json first: a damaged checkpoint is named,
and the newest one that verifies is used instead (or the user is told which --step to pass).
"""
from __future__ import annotations

import functools
import hashlib
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
from picochat.names import BadNameError, plain_name
from picochat.runtime import print0, runs_dir
from picochat.tokenizer import Tokenizer, TokenizerMismatchError
from picochat.tokenizer.bpe import fingerprint_on_disk, tokenizer_dir
from picochat.tokenizer.bpe import read_meta as tokenizer_meta

CHECKPOINTS = "checkpoints"
META_FILE = "meta.json"
STEP_DIR = re.compile(r"^step_(\d{6,})$")
TMP_PREFIX = ".tmp-"


class CheckpointError(PicochatError):
    """A checkpoint or run that cannot be found or read."""


def run_dir(name: str) -> Path:
    """Where run `name` lives; a name is never a path, so `--run ../../x` cannot leave runs_dir()."""
    return runs_dir() / plain_name(name, "run name")


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
    """Every generator's state as ints, lists and tensors: a file of them loads with weights_only=True."""
    version, python_state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states = {"python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    python, numpy = states["python"], states["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def step_of(path: Path) -> int | None:
    match = STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def step_dirs(run: Path) -> list[Path]:
    """Every `step_*` folder of the run, complete or not, oldest first; temp dirs are not listed."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if step_of(p) is not None and p.is_dir()), key=step_of)


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints (meta.json present), oldest first; temp dirs are not listed."""
    return [p for p in step_dirs(run) if (p / META_FILE).is_file()]


def remove_stale_temp_dirs(run: Path) -> None:
    root = Path(run) / CHECKPOINTS
    if root.is_dir():
        for p in root.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run: Path, keep: int, newest: int | None = None) -> None:
    """Keep the last `keep` checkpoints up to step `newest`; later ones (left by a run that was resumed
    from an earlier, good checkpoint) are not counted, so the good ones are never pruned in their favour."""
    kept = [p for p in list_checkpoints(run) if newest is None or step_of(p) <= newest]
    for old in kept[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# ---- checksums ----

def file_sha256(path: Path) -> str:
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too, so a rewritten file is hashed again and one load hashes each file once."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_records(directory: Path) -> dict:
    return {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(Path(directory).iterdir()) if p.name != META_FILE}


def expected_files(meta: dict) -> list[str]:
    """The files a complete checkpoint holds besides meta.json (RNG states were optional in old ones)."""
    world = meta.get("world_size", 1)
    optimizer = [f"optim_rank{r}.pt" for r in range(world)] if meta.get("optimizer_sharded") else ["optim.pt"]
    return ["model.pt", *optimizer]


def file_problem(path: Path, name: str, record: dict | None) -> str | None:
    """What is wrong with one file of a checkpoint, measured against meta.json's record; None when nothing."""
    file = path / name
    if not file.is_file():
        return f"{name} is missing"
    if record is None:
        return f"meta.json records no checksum for {name}"
    size = file.stat().st_size
    if size != record.get("bytes"):
        return f"{name} is {size:,} bytes but meta.json records {record.get('bytes')} (truncated or replaced)"
    if file_sha256(file) != record.get("sha256"):
        return f"{name} does not match the sha256 in meta.json (its bytes changed after it was saved)"
    return None


@functools.cache
def say_unverified(path: str) -> None:
    print0(f"{path} has no checksums (saved by an older picochat): loading it unverified")


def verify_checkpoint(path: Path) -> dict:
    """meta.json, once every file it records has the recorded size and sha256; else CheckpointError naming the
    file. A checkpoint saved before checksums is loaded unverified (and the user is told so, once)."""
    path = Path(path)
    meta = read_meta(path)
    recorded = meta.get("files")
    if recorded is None:
        say_unverified(str(path))
        missing = [name for name in expected_files(meta) if not (path / name).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {path} is incomplete: {missing[0]} is missing")
        return meta
    for name in dict.fromkeys([*recorded, *expected_files(meta)]):
        problem = file_problem(path, name, recorded.get(name))
        if problem:
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
    return meta


def verifies(path: Path) -> bool:
    try:
        verify_checkpoint(path)
    except CheckpointError:
        return False
    return True


def good_step_before(path: Path) -> str:
    """What to pass instead of a damaged checkpoint: the newest earlier step of the same run that verifies."""
    path, step = Path(path), step_of(path)
    earlier = [p for p in step_dirs(path.parent.parent) if step is not None and step_of(p) < step]
    good = next((p for p in reversed(earlier) if verifies(p)), None)
    if good is None:
        return "no earlier checkpoint of this run verifies; restore the files from a copy or start a new run"
    return (f"the newest earlier checkpoint that verifies is {good}: pass --step {step_of(good)}, or to --resume "
            f"from it move {path.name} out of {path.parent}")


def verified_meta(path: Path) -> dict:
    """verify_checkpoint, with the step to use instead added to a refusal."""
    try:
        return verify_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {good_step_before(path)}") from None


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint that verifies; newer ones that do not are named, with why, and skipped.
    None when the run has no checkpoint; CheckpointError when it has some and none verifies."""
    problems = []
    for path in reversed(step_dirs(run)):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        for problem in problems:
            print0(f"{problem}; skipped, using {path.name} instead")
        return path
    if problems:
        raise CheckpointError(f"no checkpoint of {run} can be used ({'; '.join(problems)}); "
                              f"restore the files from a copy, or start a new run")
    return None


# ---- tokenizer ----

def tokenizer_record(meta: dict) -> dict:
    """The fingerprint of the tokenizer named in meta (and how it was trained), unless the caller gave one."""
    name = meta.get("tokenizer")
    fingerprint = fingerprint_on_disk(name) if name and "tokenizer_sha256" not in meta else None
    if fingerprint is None:
        return {}
    trained = tokenizer_meta(name)
    return {"tokenizer_sha256": fingerprint,
            "tokenizer_recipe": {key: trained.get(key) for key in ("dataset", "vocab_size", "max_chars")}}


def check_tokenizer(meta: dict, path: Path) -> None:
    """A run loads only with the tokenizer it was trained with: a tokenizer retrained under the same
    name changes what every id means (or how many there are)."""
    name, recorded = meta.get("tokenizer"), meta.get("tokenizer_sha256")
    now = fingerprint_on_disk(name) if name and recorded else None
    if now is None or now == recorded:
        return
    recipe = meta.get("tokenizer_recipe") or {}
    flags = "".join(f" --{key.replace('_', '-')} {recipe[key]}" for key in ("dataset", "vocab_size", "max_chars")
                    if recipe.get(key) is not None)
    raise TokenizerMismatchError(
        f"tokenizer {name!r} changed after {path} was saved: the checkpoint was trained with sha256 "
        f"{recorded[:16]}, {tokenizer_dir(name)} now holds sha256 {now[:16]}; put the original back with "
        f"`picochat tokenizer train{flags} --name {name} --force`, or train a new run on the new tokenizer")


def runs_using_tokenizer(name: str) -> list[str]:
    """The runs with a checkpoint trained with tokenizer `name`."""
    used = set()
    for meta_file in runs_dir().glob(f"*/{CHECKPOINTS}/step_*/{META_FILE}"):
        try:
            if json.loads(meta_file.read_text()).get("tokenizer") == name:
                used.add(meta_file.parents[2].name)
        except (OSError, ValueError, AttributeError):
            continue
    return sorted(used)


# ---- save and load ----

def save_checkpoint(run: Path, step: int, model_state: dict, optimizer_state: dict, meta: dict,
                    optimizer_sharded: bool = False, keep: int | None = None) -> Path:
    """Write this step's checkpoint atomically; every rank calls it (a collective when distributed).

    Each rank writes its RNG states and, when the optimizer state is sharded, its own `optim_rank{r}.pt`;
    rank 0 writes the model, then hashes every file into meta.json, written last.
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
        meta = {**meta, **tokenizer_record(meta), "step": step, "world_size": world,
                "optimizer_sharded": optimizer_sharded, "files": file_records(tmp)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        if keep is not None:
            prune_checkpoints(run, keep, newest=step)
    _barrier()
    return final


def read_meta(path: Path) -> dict:
    meta_file = Path(path) / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no meta.json); "
                              f"list the run's checkpoints with: ls {Path(path).parent}")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, or not JSON
        raise CheckpointError(f"{meta_file} cannot be read as JSON ({type(e).__name__}): the checkpoint is damaged") \
            from None
    if not (isinstance(meta, dict) and isinstance(meta.get("files", {}), dict)
            and isinstance(meta.get("world_size", 1), int) and meta.get("world_size", 1) >= 1):
        raise CheckpointError(f"{meta_file} is not a checkpoint's meta.json (it needs a mapping with `files` and "
                              f"`world_size`): the checkpoint is damaged")
    try:
        for name in meta.get("files", {}):
            plain_name(name, "file")  # meta.json names files inside the checkpoint, never paths
    except BadNameError:
        raise CheckpointError(f"{meta_file} names a file outside the checkpoint: the checkpoint is damaged") from None
    return meta


def load_file(file: Path, device: torch.device | str = "cpu"):
    """torch.load with weights_only=True (tensors and plain containers only, no code runs); a file it cannot read
    is a CheckpointError naming it."""
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # whatever a truncated, corrupt or foreign file raises (zip, unpickling, EOF, OS errors)
        raise CheckpointError(f"{file} cannot be read as a picochat checkpoint file ({type(e).__name__}); "
                              f"{good_step_before(file.parent)}") from None


def load_rng(file: Path, meta: dict) -> dict | None:
    """This rank's RNG states; an old checkpoint's pickled ones are skipped rather than run (not bit-identical)."""
    if not file.is_file():
        return None
    try:
        return load_file(file)
    except CheckpointError:
        if "files" in meta:
            raise
        print0(f"{file} is in an older format that cannot be read without running code; resuming without "
               f"restoring the random generators (the run continues, but not bit-identically)")
        return None


def load_checkpoint(path: Path, device: torch.device | str = "cpu", load_optimizer: bool = True) -> dict:
    """{"meta", "model", "optimizer" (this rank's, or None), "rng" (this rank's, or None)}, after checking every
    file against its checksum and the tokenizer against the one the checkpoint was trained with."""
    path = Path(path)
    meta = verified_meta(path)
    check_tokenizer(meta, path)
    rank, world = _rank_world()
    model = load_file(path / "model.pt", device)
    optimizer, rng = None, None
    if load_optimizer:
        if meta.get("optimizer_sharded") and meta.get("world_size") != world:
            raise CheckpointError(
                f"{path} holds optimizer state sharded over {meta['world_size']} processes but this run has {world}; "
                f"resume with --nproc_per_node={meta['world_size']}")
        name = f"optim_rank{rank}.pt" if meta.get("optimizer_sharded") else "optim.pt"
        optimizer = load_file(path / name, device)
        rng = load_rng(path / f"rng_rank{rank}.pt", meta)
    return {"meta": meta, "model": model, "optimizer": optimizer, "rng": rng}


def named_run(name: str | Path) -> Path:
    """A run named on the command line: a path that is not a run or checkpoint is said so; a name is a plain name."""
    path = Path(name).expanduser()
    if path.is_absolute() or len(path.parts) > 1 or str(name).startswith("~"):
        raise CheckpointError(f"no checkpoint or run at {path} (a checkpoint folder holds {META_FILE}, a run folder "
                              f"{CHECKPOINTS}/); pass a run name under {runs_dir()} or the path of one of those")
    return run_dir(str(name))


def resolve_checkpoint(name_or_path: str | Path, step: int | None = None) -> Path:
    """A checkpoint dir, a run dir, or a run name under runs_dir() -> one checkpoint dir whose files verify.

    A path is used as given (`--from /path/to/step_000100`); a name never leads outside runs_dir()."""
    p = Path(name_or_path).expanduser()
    if (p / META_FILE).is_file() and step is None:
        verified_meta(p)
        return p
    run = p if (p / CHECKPOINTS).is_dir() else named_run(name_or_path)
    if step is not None:
        found = checkpoint_path(run, step)
        if not found.is_dir():
            steps = [c.name for c in list_checkpoints(run)]
            raise CheckpointError(f"run {run} has no checkpoint at step {step}; it has: {', '.join(steps) or 'none'}")
        verified_meta(found)
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
    return model.for_inference(), Tokenizer.load(meta["tokenizer"]), meta
