"""A PICOCHAT_HOME with a tiny tokenizer and a freshly initialised base run, for the SFT and RL tests."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import home_at

from picochat.checkpoint import run_dir, save_checkpoint
from picochat.config import config_to_dict
from picochat.post import generated
from picochat.runtime import init_runtime
from picochat.tokenizer import train_tokenizer
from picochat.train.build import build_model, make_optimizer, model_config
from picochat.train.config import TrainConfig
from picochat.train.metrics import read_metrics


def spelling_conversation(word: str) -> dict:
    return {"messages": [{"role": "user", "content": f"Spell the word: {word}"},
                         {"role": "assistant", "content": "-".join(word)}]}


def pseudo_words(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [generated.pseudo_word(rng) for _ in range(count)]


def write_jsonl(path: Path, conversations: list[dict]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return path


def make_home(root: Path) -> None:
    """Tokenizer `tiny` (300 ids) trained on the generated tasks' text, and run `base` at step 0
    (learning rates above nanochat's width-768 values: a width-64 model learns in a few dozen steps)."""
    texts = [f"Spell the word: {w} " + "-".join(w) for w in pseudo_words(1000, 99)]
    texts += [f"What is {a} {op} {b}? {a} {op} {b} = {generated.eval_arithmetic(a, op, b)}. ####"
              for a, op, b in generated.arithmetic_items(1000, 99)]
    train_tokenizer(texts, "tiny", vocab_size=300)
    runtime = init_runtime("cpu", seed=0)
    cfg = TrainConfig(dataset="none", tokenizer="tiny", run="base", depth=2, aspect_ratio=32, head_dim=32,
                      max_seq_len=64, window_pattern="L", total_batch_size=256, device_batch_size=8,
                      matrix_lr=0.04, embedding_lr=0.5, value_embedding_lr=0.25, lm_head_lr=0.04,
                      resid_lambda_lr=0.005, x0_lambda_lr=0.5, weight_decay=0.0, num_iterations=1, warmup_steps=0,
                      device="cpu", dtype="float32")
    model = build_model(model_config(cfg, 300), runtime)
    optimizer = make_optimizer(model, cfg, runtime)
    meta = {"model_config": dataclasses.asdict(model.config), "run_config": config_to_dict(cfg), "tokenizer": "tiny"}
    save_checkpoint(run_dir("base"), 0, model.state_dict(), optimizer.state_dict(), meta)


@pytest.fixture(scope="module")
def base_home(tmp_path_factory):
    """A PICOCHAT_HOME holding the tiny tokenizer and base run (`make_home`), shared by one test module."""
    with home_at(tmp_path_factory.mktemp("home")) as root:
        make_home(root)
        yield root


KILL_AT_STEP = """import os, signal, sys
from picochat.train import loop
real = loop.measure
def measure(s, *a):
    if s.state.step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(s, *a)
loop.measure = measure
from picochat.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_killed_at(step: int, home: Path, args: list[str]) -> subprocess.CompletedProcess:
    """`picochat ARGS` in a child process that SIGKILLs itself once step `step` has run."""
    return subprocess.run([sys.executable, "-c", KILL_AT_STEP, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PICOCHAT_HOME": str(home), "KILL_AT_STEP": str(step)})


def losses(home: Path, run: str) -> list[float]:
    return [r["loss"] for r in read_metrics(home / "runs" / run / "metrics.jsonl") if r["loss"] is not None]
