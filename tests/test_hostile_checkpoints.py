"""Hostile input to names, checkpoints and tokenizers (issue 16, items 1-4): nothing outside $PICOCHAT_HOME is
touched, nothing loaded runs code, a damaged checkpoint is named and the previous good one used, and a run
refuses a tokenizer retrained under its name."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from picochat import checkpoint as ckpt
from picochat.cli import main
from picochat.errors import PicochatError
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.names import BadNameError
from picochat.runtime import Runtime
from picochat.tokenizer import Tokenizer, TokenizerMismatchError, train_tokenizer

CPU = Runtime(torch.device("cpu"), torch.float32)
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then", "slept"]


def corpus(seed: int, count: int = 300) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60))) for _ in range(count)]


def listing(root: Path) -> dict[str, str]:
    """Every file under `root` with the sha256 of its bytes: a before/after picture."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def save_run(name: str, steps=(1, 2), tokenizer: str = "tok") -> Path:
    """Run `name` with a depth-1 model checkpointed at `steps` (weights differ per step)."""
    config = GPTConfig(depth=1, vocab_size=300, aspect_ratio=32, head_dim=32, max_seq_len=32, window_pattern="L")
    run = ckpt.run_dir(name)
    for step in steps:
        torch.manual_seed(step)
        model = GPT(config)
        model.init_weights()
        optimizer = {"state": {0: {"exp_avg": torch.randn(64)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
        meta = {"model_config": dataclasses.asdict(config), "tokenizer": tokenizer, "loop_state": {"step": step}}
        ckpt.save_checkpoint(run, step, model.state_dict(), optimizer, meta)
    return run


@pytest.fixture
def run(home) -> Path:
    train_tokenizer(corpus(0), "tok", vocab_size=300)
    return save_run("r")


def rewrite_meta(path: Path, change) -> None:
    meta = json.loads((path / "meta.json").read_text())
    change(meta)
    (path / "meta.json").write_text(json.dumps(meta))


def rerecord(path: Path, name: str) -> None:
    """What an attacker who also edits meta.json does: record the tampered file's own size and hash."""
    data = (path / name).read_bytes()
    rewrite_meta(path, lambda m: m["files"].update({name: {"bytes": len(data),
                                                           "sha256": hashlib.sha256(data).hexdigest()}}))


class CreatesFile:
    """Unpickling this opens (creates) a file: a stand-in for any command a crafted pickle could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


# ---- 1. names never leave $PICOCHAT_HOME ----

@pytest.mark.parametrize("name", ["../runs/r", "../../x", "/tmp/elsewhere", "..", ".hidden", "a/b", ""])
def test_a_run_or_tokenizer_name_that_is_a_path_is_refused(home, name):
    with pytest.raises(BadNameError, match="not a plain name"):
        ckpt.run_dir(name)
    with pytest.raises(BadNameError, match="not a plain name"):
        Tokenizer.load(name)


def test_a_tokenizer_named_after_a_run_path_leaves_the_run_untouched(run, home, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    before, outside = listing(home), listing(victim)
    for name in ("../runs/r", str(victim), str(run)):
        with pytest.raises(BadNameError):
            train_tokenizer(corpus(1), name, vocab_size=300)
    assert listing(home) == before and listing(victim) == outside


def test_tokenizer_train_cli_refuses_a_path_name_and_an_existing_name_without_force(run, home, capsys):
    from picochat.data.importer import ImportConfig, import_dataset
    docs = home.parent / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(2)))
    import_dataset([docs], "d", ImportConfig(format="jsonl", val_fraction=0.2))
    before = listing(home)
    for name in ("../runs/r", str(run), "tok"):
        with pytest.raises(SystemExit) as exit_info:
            main(["tokenizer", "train", "--dataset", "d", "--vocab-size", "300", "--name", name])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'../runs/r' is not a plain name" in err and "'tok' already exists" in err and "--force" in err
    assert listing(home) == before


def test_a_run_name_that_is_a_path_is_refused_by_resolve_and_a_real_path_still_works(run):
    with pytest.raises(PicochatError, match="no checkpoint or run at"):
        ckpt.resolve_checkpoint("../runs/r")
    with pytest.raises(PicochatError, match="not a plain name"):
        ckpt.resolve_checkpoint("..")
    assert ckpt.resolve_checkpoint(str(run)).name == "step_000002"  # --from /path/to/run is meant as a path
    assert ckpt.resolve_checkpoint(str(run / "checkpoints" / "step_000001")).name == "step_000001"


def test_sweep_names_are_plain(home):
    from picochat.lab.sweep import SweepState, run_name
    with pytest.raises(BadNameError):
        SweepState("../runs", ["true"])
    assert not (home / "runs").exists()
    name = run_name("s", {"tokenizer": "../runs/x", "depth": 2})
    assert name == "s-tokenizer._runs_x-depth2" and ckpt.run_dir(name).parent == home / "runs"
    long = run_name("s", {f"field{i}": "v" * 30 for i in range(8)})
    assert len(long) == 128 and ckpt.run_dir(long)


# ---- 2. nothing loaded runs code ----

def test_rng_states_load_with_weights_only_and_restore_every_generator_exactly(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    torch.save(ckpt.rng_states(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), np.random.normal(), torch.rand(1).item())
    random.random(), np.random.rand(3), torch.rand(5)
    ckpt.restore_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), np.random.normal(), torch.rand(1).item()) == expected


def test_a_crafted_rng_pickle_is_refused_without_running(run, tmp_path):
    marker = tmp_path / "pwned"
    step = ckpt.checkpoint_path(run, 2)
    torch.save(CreatesFile(marker), step / "rng_rank0.pt")
    with pytest.raises(PicochatError, match="rng_rank0.pt"):
        ckpt.load_checkpoint(step)
    rerecord(step, "rng_rank0.pt")  # checksums that match do not make it loadable
    with pytest.raises(PicochatError, match="rng_rank0.pt cannot be read") as refusal:
        ckpt.load_checkpoint(step)
    assert "weights_only" not in str(refusal.value)
    assert not marker.exists()


def test_an_old_checkpoint_with_a_crafted_rng_pickle_resumes_without_it(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    step = ckpt.checkpoint_path(run, 2)
    rewrite_meta(step, lambda m: m.pop("files"))  # as saved before checksums
    torch.save(CreatesFile(marker), step / "rng_rank0.pt")
    loaded = ckpt.load_checkpoint(step)
    assert loaded["rng"] is None and loaded["optimizer"] is not None and not marker.exists()
    out = capsys.readouterr().out
    assert "no checksums" in out and "without restoring the random generators" in out


# ---- 3. damaged checkpoints are named, and the previous good one is used ----

def flip_bytes(file: Path) -> None:
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(255 - b for b in data[middle:middle + 16])
    file.write_bytes(bytes(data))


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def garbage(file: Path) -> None:
    file.write_bytes(random.Random(0).randbytes(4096))


DAMAGE = [("model.pt", flip_bytes, "does not match the sha256"), ("model.pt", truncate, "truncated or replaced"),
          ("model.pt", Path.unlink, "model.pt is missing"), ("optim.pt", garbage, "optim.pt is 4,096 bytes"),
          ("rng_rank0.pt", Path.unlink, "rng_rank0.pt is missing"), ("meta.json", garbage, "cannot be read as JSON")]


@pytest.mark.parametrize("name, damage, message", DAMAGE)
def test_a_damaged_file_is_named_and_the_previous_good_checkpoint_is_used(run, capsys, name, damage, message):
    damaged = ckpt.checkpoint_path(run, 2)
    damage(damaged / name)
    with pytest.raises(PicochatError, match=message) as refusal:
        ckpt.load_checkpoint(damaged)
    assert "pass --step 1" in str(refusal.value) and "weights_only" not in str(refusal.value)
    with pytest.raises(PicochatError, match=f"{message}.*pass --step 1"):
        ckpt.resolve_checkpoint("r", step=2)
    assert ckpt.latest_checkpoint(run).name == "step_000001"
    out = capsys.readouterr().out
    assert str(damaged) in out and message in out and "skipped, using step_000001 instead" in out
    model, _, meta = ckpt.load_model_from_run("r", CPU)  # chat, eval and serve go through this
    assert meta["step"] == 1


def test_a_random_optimizer_file_in_an_old_checkpoint_is_a_one_line_error(run):
    step = ckpt.checkpoint_path(run, 2)
    rewrite_meta(step, lambda m: m.pop("files"))
    garbage(step / "optim.pt")
    with pytest.raises(PicochatError, match="optim.pt cannot be read as a picochat checkpoint file") as refusal:
        ckpt.load_checkpoint(step)
    assert "weights_only" not in str(refusal.value) and "\n" not in str(refusal.value)


def test_meta_json_that_is_json_but_not_a_checkpoint_is_named(run):
    step = ckpt.checkpoint_path(run, 2)
    for text in ("[1, 2]", '{"files": {"../../x": {}}}', '{"world_size": "many"}'):
        (step / "meta.json").write_text(text)
        with pytest.raises(PicochatError, match="meta.json"):
            ckpt.load_checkpoint(step)
        assert ckpt.latest_checkpoint(run).name == "step_000001"


def test_when_every_checkpoint_is_damaged_each_is_named(run):
    for step in (1, 2):
        flip_bytes(ckpt.checkpoint_path(run, step) / "model.pt")
    with pytest.raises(PicochatError, match="step_000002 is damaged.*step_000001 is damaged"):
        ckpt.latest_checkpoint(run)
    with pytest.raises(PicochatError, match="no earlier checkpoint of this run verifies"):
        ckpt.resolve_checkpoint("r", step=2)


def test_pruning_keeps_the_good_checkpoints_a_resume_started_from(run):
    flip_bytes(ckpt.checkpoint_path(run, 2) / "model.pt")
    save_run("r", steps=(3,))
    model = ckpt.load_checkpoint(ckpt.checkpoint_path(run, 1))["model"]
    ckpt.save_checkpoint(run, 1, model, {}, {"tokenizer": "tok"}, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_000001", "step_000002", "step_000003"]
    ckpt.save_checkpoint(run, 2, model, {}, {"tokenizer": "tok"}, keep=1)  # replaces the damaged step 2
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_000002", "step_000003"]
    assert ckpt.latest_checkpoint(run).name == "step_000003"


# ---- 4. a tokenizer retrained under a name in use ----

def test_a_run_refuses_a_tokenizer_retrained_under_its_name_until_the_original_is_back(run):
    saved = ckpt.read_meta(ckpt.checkpoint_path(run, 2))
    assert saved["tokenizer_sha256"] == Tokenizer.load("tok").fingerprint
    train_tokenizer(corpus(7), "tok", vocab_size=300, force=True)
    with pytest.raises(TokenizerMismatchError) as refusal:
        ckpt.load_model_from_run("r", CPU)
    message = str(refusal.value)
    assert saved["tokenizer_sha256"][:16] in message and Tokenizer.load("tok").fingerprint[:16] in message
    assert "--vocab-size 300 --max-chars" in message and "--name tok --force" in message
    train_tokenizer(corpus(0), "tok", vocab_size=300, force=True)  # the same text and flags: the same merges
    assert ckpt.load_model_from_run("r", CPU)[2]["step"] == 2
