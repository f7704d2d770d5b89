"""`train(cfg)`: set up, then a loop that reads like the algorithm; everything else is a call.

One process is world size 1 of the same code path: under torchrun each rank runs this,
the optimizer averages gradients itself, and every decision (stop, skip, evaluate) is the
same on all ranks.
"""
from __future__ import annotations

import dataclasses
import resource
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from picochat.checkpoint import load_checkpoint, restore_rng_states, save_checkpoint
from picochat.config import config_to_dict
from picochat.data.loader import PackedLoader
from picochat.model.gpt import GPT
from picochat.runtime import DTYPES, Runtime, init_runtime, print0
from picochat.train.build import build_model, convert_to_fp8, fp8_off, make_optimizer
from picochat.train.config import TrainConfig
from picochat.train.evaluation import greedy_continuations, is_due, validation_bpb
from picochat.train.lifecycle import GcFreeze, LoopState, StopRequest, check_finite_loss
from picochat.train.metrics import METRICS_FILE, Logger, make_logger, truncate_metrics
from picochat.train.mfu import MfuHealthCheck, model_flops_utilization, peak_flops
from picochat.train.schedule import apply_schedules
from picochat.train.setup import RunSetup, prepare_run
from picochat.train.step import GradScaler, StepResult, train_step

MFU_CHECK_STEP = 50  # late enough that compilation and allocator warm-up are behind


@dataclass
class Session:
    """Everything the loop touches, built once by `start_session`."""
    run: RunSetup
    runtime: Runtime
    raw_model: GPT  # uncompiled: saved, evaluated, sampled
    model: torch.nn.Module  # what trains (compiled on GPU)
    optimizer: torch.optim.Optimizer
    scaler: GradScaler
    loader: PackedLoader
    state: LoopState
    logger: Logger
    peak_flops: float
    health: MfuHealthCheck
    fp8_modules: dict
    last_checkpoint: str = "none yet"


def train(cfg: TrainConfig, explicit: set[str] | None = None) -> dict:
    """Run (or resume) the training; returns the final loop state as a dict."""
    runtime = init_runtime(cfg.device, seed=cfg.seed)
    run = prepare_run(cfg, explicit, runtime)
    runtime = dataclasses.replace(runtime, dtype=DTYPES[run.cfg.dtype])
    session = start_session(run, runtime)
    try:
        run_loop(session)
    finally:
        session.loader.close()
        session.logger.close()
    return dataclasses.asdict(session.state)


def run_loop(s: Session) -> None:
    cfg, state = s.run.cfg, s.state
    gc_policy = GcFreeze()
    if state.step == 0:
        state.val_bpb = evaluate(s)
        print0(f"step 0 | val bpb {state.val_bpb:.4f}")
        s.logger.log({"step": 0, "tokens": 0, "flops": 0.0, "time": 0.0, "loss": None, "lr": None,
                      "tok_per_sec": None, "mfu": None, "val_bpb": state.val_bpb})
    with StopRequest() as stop:
        try:
            while state.step < cfg.num_iterations:
                lrm = apply_schedules(s.optimizer, state.step, cfg.num_iterations, cfg.warmup_steps,
                                      cfg.warmdown_ratio, cfg.final_lr_frac)
                start = time.perf_counter()
                result = train_step(s.model, s.optimizer, s.loader, s.run.grad_accum_steps, s.scaler)
                seconds = time.perf_counter() - start  # the loss's .item() synchronised the device
                check_finite_loss(result.loss, state.step + 1, s.last_checkpoint)
                state.advance(seconds, s.run.tokens_per_step, s.run.flops_per_step)
                record = measure(s, result, seconds, lrm)
                if is_due(state.step, cfg.eval_every, cfg.num_iterations):
                    state.val_bpb = record["val_bpb"] = evaluate(s)
                if cfg.sample_every > 0 and is_due(state.step, cfg.sample_every, cfg.num_iterations):
                    print_samples(s)
                s.logger.log(record)
                for line in s.health.observe(state.step, seconds, result.data_wait, record["mfu"]):
                    print0(line)
                gc_policy.after_step(state.step)
                if is_due(state.step, cfg.save_every, cfg.num_iterations):
                    save(s)
                if stop.requested(s.runtime.device):
                    save(s)
                    print0(f"stopped by signal at step {state.step}; continue with --resume --run {cfg.run}")
                    return
        finally:
            gc_policy.restore()


def measure(s: Session, result: StepResult, seconds: float, lrm: float) -> dict:
    """One JSONL record: the cumulative axes (seed §3) and this step's throughput."""
    state, cfg = s.state, s.run.cfg
    tok_per_sec = s.run.tokens_per_step / seconds
    mfu = model_flops_utilization(s.run.plan.flops_per_token, tok_per_sec, s.peak_flops, s.runtime.world_size)
    return {"step": state.step, "tokens": state.tokens, "flops": state.flops, "time": state.train_time,
            "loss": result.loss, "lr": cfg.matrix_lr * lrm, "lrm": lrm, "tok_per_sec": tok_per_sec, "mfu": mfu,
            "data_wait": result.data_wait / seconds, "skipped": result.skipped,
            "peak_memory": peak_memory_bytes(s.runtime.device)}


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory (CUDA allocator) or, on CPU, the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def evaluate(s: Session) -> float:
    cfg = s.run.cfg
    with fp8_off(s.fp8_modules):
        return validation_bpb(s.raw_model, s.run.dataset, s.run.tokenizer, s.run.tokenizer.token_bytes(),
                              cfg.device_batch_size, cfg.max_seq_len, cfg.eval_tokens, s.runtime, cfg.loader_mode)


def print_samples(s: Session) -> None:
    if not s.runtime.is_master:
        return
    with fp8_off(s.fp8_modules):
        for sample in greedy_continuations(s.raw_model, s.run.tokenizer, device=s.runtime.device):
            print0(f"  sample: {sample!r}")


def gather_from_ranks(value) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def save(s: Session) -> None:
    meta = {"model_config": dataclasses.asdict(s.raw_model.config), "run_config": config_to_dict(s.run.cfg),
            "tokenizer": s.run.tokenizer.name, "dataset": s.run.dataset.name,
            "loop_state": dataclasses.asdict(s.state), "loader_states": gather_from_ranks(s.loader.state_dict()),
            "scaler": s.scaler.state_dict()}
    path = save_checkpoint(s.run.run_dir, s.state.step, s.raw_model.state_dict(), s.optimizer.state_dict(), meta,
                           optimizer_sharded=s.runtime.world_size > 1, keep=s.run.cfg.keep_checkpoints)
    s.last_checkpoint = str(path)


def start_session(run: RunSetup, runtime: Runtime) -> Session:
    """Build the model, optimizer, scaler and loader, restoring them from the checkpoint on --resume."""
    cfg = run.cfg
    raw_model = build_model(run.plan.config, runtime)
    optimizer = make_optimizer(raw_model, cfg, runtime)
    scaler = GradScaler(enabled=runtime.dtype == torch.float16)
    state, loader_state, restored = LoopState(), None, None
    if run.resume_from is not None:
        restored = load_checkpoint(run.resume_from, runtime.device)
        meta = restored["meta"]
        raw_model.load_state_dict(restored["model"])
        optimizer.load_state_dict(restored["optimizer"])
        scaler.load_state_dict(meta["scaler"])
        state = LoopState(**meta["loop_state"])
        loader_state = meta["loader_states"][runtime.rank]  # setup checked the world size
        print0(f"resumed from {run.resume_from} at step {state.step}")
    fp8_modules = convert_to_fp8(raw_model) if cfg.fp8 else {}
    model = torch.compile(raw_model, dynamic=False) if cfg.compile else raw_model
    loader = PackedLoader(run.dataset, run.tokenizer, "train", cfg.device_batch_size, cfg.max_seq_len,
                          rank=runtime.rank, world_size=runtime.world_size, mode=cfg.loader_mode,
                          buffer_docs=cfg.loader_buffer_docs, device=runtime.device, state=loader_state)
    if runtime.is_master and run.resume_from is not None:
        truncate_metrics(run.run_dir / METRICS_FILE, state.step)
    logger = make_logger(run.run_dir, cfg.run, config_to_dict(cfg), cfg.num_iterations, runtime.is_master,
                         cfg.wandb, cfg.log_every)
    peak, source = peak_flops(runtime.device, runtime.describe()["device_name"])
    print0(f"MFU peak: {peak:.3e} FLOP/s per device ({source}); {run.grad_accum_steps} micro-batches per step")
    health = MfuHealthCheck(runtime.device.type == "cuda", MFU_CHECK_STEP, runtime.device,
                            sum(p.numel() for p in raw_model.parameters()), cfg.device_batch_size)
    if restored is not None and restored["rng"] is not None:
        restore_rng_states(restored["rng"])  # last, after everything that draws random numbers
    return Session(run, runtime, raw_model, model, optimizer, scaler, loader, state, logger, peak, health,
                   fp8_modules, str(run.resume_from or "none yet"))


