"""Shared fixtures: one fresh $PICOCHAT_HOME per test (`home`), and `home_at` for module-scoped homes that are
expensive to fill (a tokenizer, a dataset, a base run) and shared by a module's tests."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest


@contextlib.contextmanager
def home_at(root: Path):
    """Point $PICOCHAT_HOME at `root` for the duration, then restore what was there."""
    previous = os.environ.get("PICOCHAT_HOME")
    os.environ["PICOCHAT_HOME"] = str(root)
    try:
        yield root
    finally:
        if previous is None:
            del os.environ["PICOCHAT_HOME"]
        else:
            os.environ["PICOCHAT_HOME"] = previous


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh, empty $PICOCHAT_HOME for one test."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("PICOCHAT_HOME", str(root))
    return root


def write_dataset(name: str, texts: dict[str, list[str]], **writer_options) -> Path:
    """Dataset `name` under the current $PICOCHAT_HOME, one shard per split, written through the public writer."""
    from picochat.data.shards import ShardWriter, write_manifest  # noqa: PLC0415  (tests that make data only)
    from picochat.runtime import datasets_dir  # noqa: PLC0415

    root = datasets_dir() / name
    shards = {}
    for split, docs in texts.items():
        writer = ShardWriter(root, split, **writer_options)
        for text in docs:
            writer.add(text)
        writer.close_shard()
        shards[split] = writer.finished
    write_manifest(root, name, "2026-01-01", {"command": "test"}, shards, {}, "test")
    return root
