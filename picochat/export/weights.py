"""Weights as safetensors, one file or shards with transformers' index (model.safetensors.index.json)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from picochat.export.hf_config import ExportError

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 10**9  # transformers' own default shard size (5 GB)


def shard_names(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped in order into shards of at most max_shard_bytes (a bigger tensor gets a shard alone)."""
    shards, size = [[]], 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors writes owner-only (0600) files; an export is made to be shared, so it gets the
    permissions of any other file this process writes (0666 less the umask)."""
    save_file(tensors, path, metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def save_weights(state: dict[str, torch.Tensor], out: Path, dtype: torch.dtype,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Path]:
    """Write `state` cast to `dtype`; returns the files written."""
    state = {name: t.detach().to("cpu", dtype).contiguous() for name, t in state.items()}
    shards = shard_names(state, max_shard_bytes)
    if len(shards) == 1:
        write_shard(state, out / WEIGHTS_FILE)
        return [out / WEIGHTS_FILE]
    files = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for file, names in zip(files, shards):
        write_shard({name: state[name] for name in names}, out / file)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total},
             "weight_map": {name: file for file, names in zip(files, shards) for name in names}}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [out / file for file in files] + [out / INDEX_FILE]


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an export, from its single file or its shards, in fp32 (picochat's master weights)."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        files = sorted(set(json.loads((folder / INDEX_FILE).read_text())["weight_map"].values()))
    elif (folder / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        raise ExportError(f"{folder} has neither {WEIGHTS_FILE} nor {INDEX_FILE}; point at a `picochat export` folder")
    state = {}
    for file in files:
        state.update(load_file(folder / file))
    return {name: t.float() for name, t in state.items()}
