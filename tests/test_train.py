"""Pretraining: schedules, exact resume, 1 process vs 2 (gloo), synchronised fp16 skips,
the metrics file, and bad input refused before any compute. CPU, fp32, tiny models."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from picochat import checkpoint as ckpt
from picochat.errors import PicochatError
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.optim.setup import OptimHParams, build_optimizer
from picochat.train import loop as train_loop
from picochat.train import pretrain
from picochat.train.config import TrainConfig
from picochat.train.lifecycle import NonFiniteLossError, check_finite_loss
from picochat.train.metrics import METRICS_FILE, REQUIRED_AXES, read_metrics
from picochat.train.mfu import diagnose_low_mfu
from picochat.train.schedule import apply_schedules, lr_multiplier, muon_momentum, weight_decay_multiplier
from picochat.train.setup import check_batch
from picochat.train.step import GradScaler, train_step

from conftest import home_at

WORDS = "the cat sat on a mat and dog ran to big red house with small blue car in park near old tree".split()


# --- pure pieces ------------------------------------------------------------------------------

def test_lr_warms_up_holds_then_warms_down_to_the_final_fraction():
    lrm = [lr_multiplier(s, 100, warmup_steps=10, warmdown_ratio=0.5, final_lr_frac=0.1) for s in range(101)]
    assert lrm[0] == pytest.approx(0.1) and lrm[9] == pytest.approx(1.0)
    assert all(m == 1.0 for m in lrm[10:50])
    assert all(a > b for a, b in zip(lrm[50:100], lrm[51:101]))
    assert lrm[100] == pytest.approx(0.1)


def test_muon_momentum_and_weight_decay_schedules():
    assert muon_momentum(0, 1000) == pytest.approx(0.85)
    assert muon_momentum(400, 10_000) == pytest.approx(0.97)
    assert muon_momentum(1000, 1000) == pytest.approx(0.90)
    assert weight_decay_multiplier(0, 100) == 1.0 and weight_decay_multiplier(100, 100) == pytest.approx(0.0)


def test_schedules_are_written_into_param_groups_in_place():
    lr_tensor = torch.tensor(0.5)
    muon = {"kind": "muon", "lr": lr_tensor, "momentum": 0.95, "weight_decay": 0.2, "params": []}
    adamw = {"kind": "adamw", "lr": 0.01, "weight_decay": 0.1, "params": []}

    class FakeOptimizer:
        param_groups = [muon, adamw]

    lrm = apply_schedules(FakeOptimizer, 0, 100, 10, 0.5, 0.1)
    assert muon["lr"] is lr_tensor and lr_tensor.item() == pytest.approx(0.5 * lrm)  # filled, not replaced
    assert adamw["lr"] == pytest.approx(0.01 * lrm) and adamw["weight_decay"] == 0.1
    assert muon["momentum"] == pytest.approx(0.85)
    apply_schedules(FakeOptimizer, 100, 100, 10, 0.5, 0.1)
    assert muon["weight_decay"] == pytest.approx(0.0) and muon["initial_weight_decay"] == 0.2


def test_batch_that_does_not_divide_is_refused_with_a_fix():
    assert check_batch(8192, 4, 512, 2) == 2
    with pytest.raises(PicochatError, match="--total-batch-size 8192 or 10240"):
        check_batch(9000, 4, 512, 1)


def test_grad_scaler_backs_off_on_overflow_and_grows_after_good_steps():
    scaler = GradScaler(enabled=True, init_scale=8.0, growth_interval=2)
    scaler.update(found_inf=True)
    assert scaler.scale == 4.0
    scaler.update(False)
    scaler.update(False)
    assert scaler.scale == 8.0
    assert GradScaler(enabled=False).scale_loss(torch.tensor(3.0)).item() == 3.0


def test_low_mfu_is_explained_with_measurements():
    reasons = "\n".join(diagnose_low_mfu(0.2, 0.3, 10 * 2**30, 80 * 2**30, 0.02, 8))
    assert "30.0% of step time" in reasons and "--device-batch-size 16" in reasons and "2.0%" in reasons
    assert diagnose_low_mfu(0.45, 0.3, 1, 2, 0.5, 8) == []


def test_nan_loss_stops_with_a_message_naming_the_last_good_checkpoint():
    with pytest.raises(NonFiniteLossError, match="step 12.*step_000010"):
        check_finite_loss(float("nan"), 12, "runs/x/checkpoints/step_000010")
    check_finite_loss(2.5, 12, "none")


# --- 1 process with accumulation == 2 gloo processes; fp16 skips agree across ranks -------------

def tiny_model_and_optimizer():
    """In float64: Muon and AdamW (eps 1e-10) amplify fp32 summation-order noise to ~1e-4 in a step or
    two, even between two single-process runs that only split the batch differently."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        config = GPTConfig(depth=1, vocab_size=64, aspect_ratio=32, head_dim=16, max_seq_len=16, window_pattern="L")
        model = GPT(config, torch.float64)
        model.init_weights()
    finally:
        torch.set_default_dtype(default)
    hparams = OptimHParams(weight_decay=0.1)
    return model, build_optimizer(model.param_groups(), hparams, model.config.width, torch.float64)


def fixed_batches(steps: int = 3, rows: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (steps, rows, 17), generator=g)


def losses_with(rows_of_micro_batches, steps: int = 3) -> list[float]:
    """Train `steps` steps; each step feeds the given row slices of the fixed batch as micro-batches."""
    model, optimizer = tiny_model_and_optimizer()
    data = fixed_batches(steps)
    batches = iter([(data[s, r, :-1], data[s, r, 1:]) for s in range(steps) for r in rows_of_micro_batches])
    return [train_step(model, optimizer, batches, len(rows_of_micro_batches), GradScaler(False)).loss
            for _ in range(steps)]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        losses = losses_with([slice(2 * rank, 2 * rank + 2)])
        # fp16 overflow on rank 1 only: every rank must skip the same step.
        model, optimizer = tiny_model_and_optimizer()
        before = [p.detach().clone() for p in model.parameters()]
        scaler = GradScaler(enabled=True, init_scale=4.0)
        x = fixed_batches(1)[0, 2 * rank:2 * rank + 2]
        scaler.scale_loss(model(x[:, :-1], x[:, 1:])).backward()
        if rank == 1:
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        skipped = scaler.unscale_and_check(list(model.parameters()))
        if not skipped:
            optimizer.step()
        unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"losses": losses, "skipped": skipped, "unchanged": unchanged}, f)
        dist.barrier()  # both ranks done before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gloo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_accumulation(two_rank_results):
    single = losses_with([slice(0, 2), slice(2, 4)])
    assert single[0] != single[-1], "training must move the loss for the comparison to mean anything"
    for result in two_rank_results:
        assert result["losses"] == pytest.approx(single, rel=1e-6)


@pytest.mark.slow
def test_inf_on_one_rank_makes_every_rank_skip_the_step(two_rank_results):
    assert [r["skipped"] for r in two_rank_results] == [True, True]
    assert [r["unchanged"] for r in two_rank_results] == [True, True]


# --- the whole loop on a tiny dataset ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    """A PICOCHAT_HOME with a small word-salad dataset `tiny` and its 300-token tokenizer, shared by the module."""
    from picochat.data.dataset import open_dataset
    from picochat.data.importer import ImportConfig, import_dataset
    from picochat.tokenizer import train_tokenizer

    with home_at(tmp_path_factory.mktemp("home")) as root:
        rng = random.Random(0)
        docs = root / "docs.jsonl"
        docs.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120)))})
                                + "\n" for _ in range(400)))
        import_dataset([docs], "tiny", ImportConfig(format="jsonl", val_fraction=0.2, docs_per_row_group=32))
        train_tokenizer(open_dataset("tiny").iter_documents("train"), "tiny", vocab_size=300, dataset="tiny")
        yield root


def tiny_config(**overrides) -> TrainConfig:
    base = dict(dataset="tiny", depth=2, aspect_ratio=32, head_dim=32, max_seq_len=32, window_pattern="L",
                device_batch_size=4, total_batch_size=256, num_iterations=6, warmup_steps=2, matrix_lr=0.02,
                embedding_lr=0.1, lm_head_lr=0.01, eval_every=3, eval_tokens=256, sample_every=0, save_every=3,
                keep_checkpoints=5, device="cpu", dtype="float32", loader_buffer_docs=64, run="base")
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def base_run(tiny_home):
    pretrain.train(tiny_config())
    return ckpt.run_dir("base")


@pytest.mark.slow
def test_metrics_file_has_every_axis_and_val_bpb_on_eval_steps(base_run):
    records = read_metrics(base_run / METRICS_FILE)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4, 5, 6]
    for r in records:
        assert set(REQUIRED_AXES) <= set(r)
    assert [r["step"] for r in records if "val_bpb" in r] == [0, 3, 6]
    assert all(r["peak_memory"] > 0 for r in records[1:])
    tokens, flops, times = ([r[k] for r in records] for k in ("tokens", "flops", "time"))
    assert tokens == [256 * s for s in range(0, 7)] and flops == sorted(flops) and times == sorted(times)
    assert (base_run / "config.json").is_file() and json.loads((base_run / "env.json").read_text())["world_size"] == 1


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_losses_exactly(base_run, tiny_home):
    uninterrupted = [r["loss"] for r in read_metrics(base_run / METRICS_FILE)]
    resumed_run = ckpt.run_dir("resumed")
    shutil.copytree(base_run, resumed_run)
    shutil.rmtree(ckpt.checkpoint_path(resumed_run, 6))  # as if stopped right after step 3's checkpoint
    pretrain.train(tiny_config(run="resumed", resume=True), explicit={"run", "resume"})
    resumed = [r["loss"] for r in read_metrics(resumed_run / METRICS_FILE)]
    assert resumed == uninterrupted  # exact: fp32 on CPU, same data cursor, optimizer and RNG


@pytest.mark.slow
def test_a_trained_run_reloads_for_evaluation(base_run):
    from picochat.runtime import Runtime
    model, tokenizer, meta = ckpt.load_model_from_run("base", Runtime(torch.device("cpu"), torch.float32))
    assert meta["step"] == 6 and tokenizer.name == "tiny" and model.config.depth == 2
    ids = torch.tensor([tokenizer.encode("the cat", prepend_bos=True)])
    assert model(ids).shape == (1, ids.size(1), tokenizer.vocab_size)


@pytest.fixture
def no_compute(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the input was checked")
    monkeypatch.setattr(pretrain, "build_model", refuse)


@pytest.mark.parametrize("overrides, message", [
    (dict(dataset="missing"), "no dataset 'missing'"),
    (dict(tokenizer="missing"), "missing"),
    (dict(total_batch_size=300), "not a multiple"),
    (dict(run="never-ran", resume=True), "has no checkpoint"),
])
def test_bad_input_is_refused_before_compute(tiny_home, no_compute, overrides, message):
    with pytest.raises(PicochatError, match=message):
        pretrain.train(tiny_config(**{"run": "fresh", **overrides}))


@pytest.mark.slow
def test_resume_with_a_changed_depth_is_refused_before_compute(base_run, no_compute):
    with pytest.raises(PicochatError, match="cannot change the model shape.*--depth 2 -> 3"):
        pretrain.train(tiny_config(depth=3, resume=True), explicit={"run", "resume", "depth"})


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops_cleanly(tiny_home, monkeypatch):
    real_measure = train_loop.measure

    def measure_then_signal(s, *args):
        if s.state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_measure(s, *args)

    monkeypatch.setattr(train_loop, "measure", measure_then_signal)
    state = pretrain.train(tiny_config(run="signalled", save_every=0, eval_every=0))
    assert state["step"] == 2
    assert [p.name for p in ckpt.list_checkpoints(ckpt.run_dir("signalled"))] == ["step_000002"]


def test_a_fitted_constants_file_changes_the_derived_plan(tiny_home, tmp_path):
    from picochat.runtime import init_runtime
    from picochat.train.setup import prepare_run
    constants = tmp_path / "fitted.json"
    constants.write_text(json.dumps({"ratio": 21.0}))
    derived = dict(num_iterations=None, total_batch_size=256)
    reference = prepare_run(tiny_config(run="plan-ref", **derived), None, init_runtime("cpu"))
    fitted = prepare_run(tiny_config(run="plan-fit", constants=str(constants), **derived), None, init_runtime("cpu"))
    assert fitted.cfg.ratio == 21.0 and reference.cfg.ratio == 10.5
    assert fitted.cfg.num_iterations == pytest.approx(2 * reference.cfg.num_iterations, abs=1)


def test_a_missing_constants_file_is_refused_before_compute(tiny_home, no_compute):
    with pytest.raises(PicochatError, match="constants file"):
        pretrain.train(tiny_config(run="fresh", constants="/nonexistent/fitted.json"))


def test_a_new_run_over_a_trained_one_needs_force(base_run, tiny_home):
    with pytest.raises(PicochatError, match="already has checkpoints.*--resume.*--force"):
        pretrain.train(tiny_config(num_iterations=1))
    assert ckpt.list_checkpoints(base_run)  # refused before anything was touched


@pytest.mark.slow
def test_force_starts_a_run_over_and_its_metrics_with_it(tiny_home):
    pretrain.train(tiny_config(run="forced", num_iterations=2, save_every=0, eval_every=0))
    state = pretrain.train(tiny_config(run="forced", num_iterations=1, save_every=0, eval_every=0, force=True))
    assert state["step"] == 1 and [p.name for p in ckpt.list_checkpoints(ckpt.run_dir("forced"))] == ["step_000001"]
    assert [r["step"] for r in read_metrics(ckpt.run_dir("forced") / METRICS_FILE)] == [0, 1]


@pytest.mark.parametrize("overrides, message", [
    (dict(device_batch_size=0), "--device-batch-size 0 is not valid: it must be greater than 0"),
    (dict(matrix_lr=-1.0), "--matrix-lr -1.0 is not valid: it must be 0 or more"),
    (dict(eval_tokens=float("nan")), "--eval-tokens nan is not valid"),
])
def test_numbers_that_cannot_work_are_refused_by_flag(tiny_home, no_compute, overrides, message):
    with pytest.raises(PicochatError, match=message):
        pretrain.train(tiny_config(run="fresh", **overrides))


def make_core_bundle(root):
    """One multiple-choice task of four items, enough for CORE to be a number."""
    (root / "eval_data").mkdir(parents=True)
    (root / "core.yaml").write_text("icl_tasks:\n- {label: mc, dataset_uri: mc.jsonl, num_fewshot: [0], "
                                    "icl_task_type: multiple_choice, continuation_delimiter: ' '}\n")
    (root / "eval_meta_data.csv").write_text("Eval Task,Task Category,Random baseline\nmc,x,50\n")
    items = [{"query": f"the {w}", "choices": ["cat", "dog"], "gold": i % 2} for i, w in enumerate(WORDS[:4])]
    (root / "eval_data" / "mc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    return root


@pytest.mark.slow
def test_core_every_logs_core_during_pretraining(tiny_home, tmp_path):
    bundle = make_core_bundle(tmp_path / "bundle")
    pretrain.train(tiny_config(run="with-core", num_iterations=4, save_every=0, eval_every=0, core_every=2,
                               core_bundle=str(bundle)))
    records = read_metrics(ckpt.run_dir("with-core") / METRICS_FILE)
    assert [r["step"] for r in records if "core" in r] == [2, 4]
    assert all(-1.0 <= r["core"] <= 1.0 for r in records if "core" in r)


@pytest.mark.slow
def test_a_small_val_split_is_scored_once_whole(tiny_home):
    from picochat.data.dataset import open_dataset
    from picochat.eval.bpb import SplitBpb, split_stream_within
    from picochat.tokenizer import Tokenizer
    dataset, tok = open_dataset("tiny"), Tokenizer.load("tiny")
    stream = split_stream_within(dataset, tok, "val", 10**7)
    assert split_stream_within(dataset, tok, "val", len(stream) - 2) is None  # one token over the budget
    model = GPT(GPTConfig(depth=1, vocab_size=tok.vocab_size, aspect_ratio=32, head_dim=16, max_seq_len=32,
                          window_pattern="L"))
    model.init_weights()
    result = SplitBpb(dataset, tok, "val", 4, 32, 10**7)(model)
    assert result.whole_split and result.tokens == len(stream) - 1
    assert "whole val split" in result.describe("val")


@pytest.mark.slow
def test_a_signal_stop_exits_143_and_says_stopped(tiny_home):
    """SIGTERM at step 2 (a real signal to a real `picochat train`): exit status 128 + 15 and "stopped"."""
    script = ("import os, signal, sys\n"
              "from picochat.train import loop\n"
              "real = loop.measure\n"
              "def measure(s, *a):\n"
              "    if s.state.step == 2: os.kill(os.getpid(), signal.SIGTERM)\n"
              "    return real(s, *a)\n"
              "loop.measure = measure\n"
              "from picochat.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    args = ["--dataset", "tiny", "--run", "sigterm", "--depth", "2", "--aspect-ratio", "32", "--head-dim", "32",
            "--max-seq-len", "32", "--window-pattern", "L", "--device-batch-size", "4", "--total-batch-size", "128",
            "--num-iterations", "6", "--eval-every", "0", "--eval-tokens", "128", "--sample-every", "0",
            "--device", "cpu", "--dtype", "float32"]
    done = subprocess.run([sys.executable, "-c", script, "train", *args], capture_output=True, text=True,
                          env={**os.environ, "PICOCHAT_HOME": str(tiny_home)}, timeout=300)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "stopped: step 2" in done.stdout and "done:" not in done.stdout
