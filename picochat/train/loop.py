"""The one training loop. Pretraining (pretrain.py), SFT (post/sft.py) and RL (post/rl.py) each supply a
`Stage`: its batches, its loss, its evaluations and what its checkpoint must remember. The loop owns the
rest: schedule, step, measurement, logging, evaluation cadence, checkpoints, resume, signals, GC, the
MFU health check and the NaN stop, so a fix to any of them lands in every stage at once.

One process is world size 1 of the same code path: under torchrun each rank runs this, the optimizer
averages gradients itself, and every decision (stop, skip, evaluate) is the same on all ranks.
"""
from __future__ import annotations

import dataclasses
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
import torch.distributed as dist

from picochat.checkpoint import load_checkpoint, restore_rng_states, save_checkpoint
from picochat.config import config_to_dict
from picochat.errors import PicochatError
from picochat.model.gpt import GPT
from picochat.runtime import DTYPES, Runtime, print0
from picochat.train.evaluation import is_due
from picochat.train.fit_batch import out_of_memory_advice
from picochat.train.lifecycle import GcFreeze, LoopState, StopRequest, check_finite_loss
from picochat.train.metrics import METRICS_FILE, Logger, make_logger, truncate_metrics
from picochat.train.mfu import MfuHealthCheck, cpu_rate_fields, peak_flops
from picochat.train.schedule import apply_schedules, is_muon_group
from picochat.train.step import GradScaler, StepResult, train_step

MFU_CHECK_STEP = 50  # late enough that compilation and allocator warm-up are behind


@dataclass
class StepWork:
    """What the stage hands the loop for one optimizer step."""
    batches: Iterator  # this step's micro-batches (this rank's)
    micro_batches: int
    tokens: int  # over all ranks: the tok/s numerator
    flops: float  # over all ranks: the MFU numerator (RL adds its sampling)
    record: dict = field(default_factory=dict)  # the stage's own numbers for this step's log record


@dataclass
class Evaluation:
    """An evaluation the loop runs every `every` steps and at the last step (`every` 0: the last step only).
    `run()` returns the fields it adds to the step's record."""
    name: str
    every: int
    run: Callable[[], dict]
    at_start: bool = False  # also before the first step of a fresh run

    def due(self, step: int, last_step: int) -> bool:
        return is_due(step, self.every, last_step)


class Stage(Protocol):
    loss_fn: Callable

    def work(self, step: int) -> StepWork: ...
    def evaluations(self) -> list[Evaluation]: ...
    def checkpoint_meta(self) -> dict: ...  # model/run config, tokenizer, dataset, ...
    def cursor(self) -> dict: ...  # this rank's data or problem position, JSON-able
    def restore_cursor(self, cursor: dict) -> None: ...
    def close(self) -> None: ...


@dataclass
class LoopPlan:
    """The loop's share of a stage's resolved config."""
    run: str
    run_dir: Path
    num_iterations: int
    warmup_steps: int
    warmdown_ratio: float
    final_lr_frac: float
    save_every: int  # 0: only at the end
    keep_checkpoints: int | None
    log_every: int
    wandb: bool
    compile: bool
    device_batch_size: int  # for the MFU health check's advice
    config: dict  # the resolved config, for wandb

    @classmethod
    def of(cls, cfg, run_dir: Path, **fixed) -> LoopPlan:
        """From a stage config's fields of the same names; `fixed` holds what the stage decides itself."""
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
        return cls(**{"keep_checkpoints": 2, "log_every": 1, "wandb": False, **values, **fixed,
                      "run_dir": run_dir, "config": config_to_dict(cfg)})


@dataclass
class Session:
    stage: Stage
    plan: LoopPlan
    runtime: Runtime
    model: GPT  # uncompiled: saved, evaluated, sampled
    trained: torch.nn.Module  # what trains (compiled on GPU)
    optimizer: torch.optim.Optimizer
    scaler: GradScaler
    state: LoopState
    logger: Logger
    peak_flops: float
    health: MfuHealthCheck
    last_checkpoint: str = "none yet"
    results: dict = field(default_factory=dict)  # the latest value of every evaluation field
    stopped_by: int | None = None  # the signal that stopped the run, if one did


def run_loop(s: Session) -> None:
    plan, state = s.plan, s.state
    evaluations = s.stage.evaluations()
    gc_policy = GcFreeze()
    if state.step == 0 and any(e.at_start for e in evaluations):
        log_start(s, [e for e in evaluations if e.at_start])
    with StopRequest() as stop:
        try:
            while state.step < plan.num_iterations:
                lrm = apply_schedules(s.optimizer, state.step, plan.num_iterations, plan.warmup_steps,
                                      plan.warmdown_ratio, plan.final_lr_frac)
                start = time.perf_counter()
                work = s.stage.work(state.step)
                result = train_step(s.trained, s.optimizer, work.batches, work.micro_batches, s.scaler, s.stage.loss_fn)
                seconds = time.perf_counter() - start  # the loss's .item() synchronised the device
                check_finite_loss(result.loss, state.step + 1, s.last_checkpoint)
                state.advance(seconds, work.tokens, work.flops)
                record = measure(s, result, work, seconds, lrm)
                if is_due(state.step, plan.save_every, plan.num_iterations):
                    save(s)  # before the evaluations: an evaluation that crashes loses no training
                record |= evaluate(s, [e for e in evaluations if e.due(state.step, plan.num_iterations)])
                s.logger.log(record)
                for line in s.health.observe(state.step, seconds, result.data_wait, record["mfu"]):
                    print0(line)
                gc_policy.after_step(state.step)
                if stop.requested(s.runtime.device):
                    s.stopped_by = stop.received or signal.SIGTERM  # a peer rank got it: torchrun's SIGTERM
                    save(s)
                    print0(f"stopped by signal at step {state.step}; continue with --resume --run {plan.run}")
                    return
        finally:
            gc_policy.restore()


def measure(s: Session, result: StepResult, work: StepWork, seconds: float, lrm: float) -> dict:
    """One JSONL record: the cumulative axes, this step's throughput, and the stage's own numbers."""
    state = s.state
    return {"step": state.step, "tokens": state.tokens, "flops": state.flops, "time": state.train_time,
            "loss": result.loss, "lr": matrix_lr(s.optimizer) * lrm, "lrm": lrm,
            "tok_per_sec": work.tokens / seconds, "mfu": work.flops / seconds / (s.peak_flops * s.runtime.world_size),
            "data_wait": result.data_wait / seconds, "skipped": result.skipped,
            "peak_memory": peak_memory_bytes(s.runtime.device),
            **cpu_rate_fields(s.runtime.device, work.tokens / seconds, s.peak_flops), **work.record}


def matrix_lr(optimizer: torch.optim.Optimizer) -> float:
    """The peak LR of the block matrices (Muon): the one a run is described by."""
    groups = [g for g in optimizer.param_groups if is_muon_group(g)] or optimizer.param_groups
    return groups[0]["initial_lr"]


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory (CUDA allocator) or, on CPU, the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def evaluate(s: Session, due: list[Evaluation]) -> dict:
    fields: dict = {}
    for evaluation in due:
        fields |= evaluation.run()
    s.results |= fields
    if "val_bpb" in fields:
        s.state.val_bpb = fields["val_bpb"]
    return fields


def log_start(s: Session, evaluations: list[Evaluation]) -> None:
    """The step-0 record: the evaluations of the untrained (or base) model."""
    fields = evaluate(s, evaluations)
    print0("step 0 | " + " | ".join(f"{k} {v:.4f}" for k, v in fields.items() if isinstance(v, float)))
    s.logger.log({"step": 0, "tokens": 0, "flops": 0.0, "time": 0.0, "loss": None, "lr": None,
                  "tok_per_sec": None, "mfu": None, **fields})


def gather_from_ranks(value) -> list:
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def save(s: Session) -> Path:
    meta = {**s.stage.checkpoint_meta(), "loop_state": dataclasses.asdict(s.state),
            "cursors": gather_from_ranks(s.stage.cursor()), "scaler": s.scaler.state_dict()}
    path = save_checkpoint(s.plan.run_dir, s.state.step, s.model.state_dict(), s.optimizer.state_dict(), meta,
                           optimizer_sharded=s.runtime.world_size > 1, keep=s.plan.keep_checkpoints)
    s.last_checkpoint = str(path)
    return path


def check_precision(model: GPT, dtype_name: str) -> None:
    """The model computes in the dtype its config records (the runtime's, set before the model was built)."""
    embedding_dtype = torch.float32 if model.compute_dtype == torch.float16 else model.compute_dtype
    if model.compute_dtype != DTYPES[dtype_name] or model.wte.weight.dtype != embedding_dtype:
        raise PicochatError(f"the model computes in {model.compute_dtype} (embeddings {model.wte.weight.dtype}) but the "
                            f"config says --dtype {dtype_name}; set the dtype before building the model")


def start_session(stage: Stage, plan: LoopPlan, runtime: Runtime, model: GPT, optimizer: torch.optim.Optimizer,
                  resume_from: Path | None, dtype_name: str) -> Session:
    """Restore model, optimizer, scaler, loop state and the stage's cursor on resume; logger, MFU peak."""
    check_precision(model, dtype_name)
    scaler = GradScaler(enabled=runtime.dtype == torch.float16)
    state, restored = LoopState(), None
    if resume_from is not None:
        restored = load_checkpoint(resume_from, runtime.device)
        meta = restored["meta"]
        model.load_state_dict(restored["model"])
        optimizer.load_state_dict(restored["optimizer"])
        scaler.load_state_dict(meta["scaler"])
        state = LoopState(**meta["loop_state"])
        cursors = meta.get("cursors") or meta["loader_states"]  # loader_states: pretraining checkpoints before v0.2
        stage.restore_cursor(cursors[runtime.rank])  # setup checked the world size
        print0(f"resumed from {resume_from} at step {state.step}")
    trained = torch.compile(model, dynamic=False) if plan.compile else model
    if runtime.is_master:
        truncate_metrics(plan.run_dir / METRICS_FILE, state.step if resume_from is not None else -1)
    logger = make_logger(plan.run_dir, plan.run, plan.config, plan.num_iterations, runtime.is_master,
                         plan.wandb, plan.log_every)
    peak, source = peak_flops(runtime.device, runtime.describe()["device_name"])
    print0(f"MFU peak: {peak:.3e} FLOP/s per device ({source})")
    health = MfuHealthCheck(runtime.device.type == "cuda", MFU_CHECK_STEP, runtime.device,
                            sum(p.numel() for p in model.parameters()), plan.device_batch_size)
    if restored is not None and restored["rng"] is not None:
        restore_rng_states(restored["rng"])  # last, after everything that draws random numbers
    return Session(stage, plan, runtime, model, trained, optimizer, scaler, state, logger, peak, health,
                   str(resume_from or "none yet"))


def run_stage(stage: Stage, plan: LoopPlan, runtime: Runtime, model: GPT, optimizer: torch.optim.Optimizer,
              resume_from: Path | None, dtype_name: str) -> Session:
    """Start (or resume) and run the loop; returns the finished session (state, results, stopped_by)."""
    session = start_session(stage, plan, runtime, model, optimizer, resume_from, dtype_name)
    try:
        run_loop(session)
    except torch.OutOfMemoryError as error:  # say which flag to lower, by how much
        raise out_of_memory_advice(plan.device_batch_size, session.state.step + 1) from error
    finally:
        stage.close()
        session.logger.close()
    return session


def exit_status(stopped_by: int | None) -> int:
    """0 for a finished run; 128 + the signal for one a signal stopped (130 Ctrl-C, 143 SIGTERM), as a shell reports it."""
    return 0 if stopped_by is None else 128 + int(stopped_by)
