"""Before any compute: check the inputs, resolve the config from the plan, record provenance.

Every refusal here (missing dataset or tokenizer, a batch that does not divide, a resume
without a checkpoint or with another model shape) happens before a model is built.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

import picochat
from picochat.checkpoint import CHECKPOINTS, check_tokenizer, latest_checkpoint, list_checkpoints, read_meta, run_dir
from picochat.config import format_config, save_config
from picochat.data.dataset import Dataset, open_dataset
from picochat.errors import PicochatError
from picochat.model.config import GPTConfig
from picochat.runtime import Runtime, dtype_name, print0
from picochat.scaling import Plan, load_constants, make_plan
from picochat.tokenizer import Tokenizer
from picochat.train.build import check_fp8, default_compile, model_config
from picochat.train.config import LR_FIELDS, SHAPE_FIELDS, TrainConfig
from picochat.train.fit_batch import fit_device_batch
from picochat.train.mfu import cpu_peak_flops


@dataclass
class RunSetup:
    cfg: TrainConfig  # resolved: no field is None except n_kv_heads (= n_heads) and one of ratio / target_flops
    plan: Plan
    dataset: Dataset
    tokenizer: Tokenizer
    run_dir: Path
    resume_from: Path | None
    grad_accum_steps: int

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.total_batch_size

    @property
    def flops_per_step(self) -> float:
        return float(self.plan.flops_per_token) * self.cfg.total_batch_size


def default_explicit(cfg: TrainConfig) -> set[str]:
    """For programmatic calls: the fields that differ from the dataclass defaults count as given."""
    return {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != f.default}


def merge_resumed(cfg: TrainConfig, saved: dict, explicit: set[str], checkpoint: Path) -> TrainConfig:
    """The saved run's config, with the flags given now on top; a changed model shape is refused."""
    changed = [f"--{name.replace('_', '-')} {saved.get(name)} -> {getattr(cfg, name)}"
               for name in SHAPE_FIELDS if name in explicit and getattr(cfg, name) != saved.get(name)]
    if changed:
        raise PicochatError(f"--resume cannot change the model shape of {checkpoint} ({'; '.join(changed)}); "
                            f"drop those flags to resume, or start a new run with --run NEW")
    return resumed_config(cfg, saved, explicit)


def resumed_config(cfg, saved: dict, explicit: set[str]):
    """Any stage's config as saved with its checkpoint, with the flags given now on top."""
    known = {f.name for f in dataclasses.fields(cfg)}
    values = {k: v for k, v in saved.items() if k in known}
    values.update({name: getattr(cfg, name) for name in explicit})
    return type(cfg)(**values)


def resume_point(run: Path, name: str, resume: bool, force: bool, runtime: Runtime) -> Path | None:
    """Every stage's start: the checkpoint to continue (--resume), or None for a fresh run. A fresh run
    under a name that has checkpoints is refused unless --force, which deletes them first."""
    if resume:
        found = latest_checkpoint(run)
        if found is None:
            raise PicochatError(f"--resume: run {name!r} has no checkpoint in {run / CHECKPOINTS}; "
                                f"start it without --resume (or name the run with --run)")
        check_same_world(read_meta(found), runtime.world_size, found)
        check_tokenizer(read_meta(found), found)  # before the shape check: a retrained tokenizer, named as such
        return found
    if list_checkpoints(run):
        if not force:
            raise PicochatError(f"run {name!r} already has checkpoints in {run / CHECKPOINTS}; pass --resume to "
                                f"continue it, --force to start it over (deleting them), or --run NEW for a new run")
        if runtime.is_master:
            shutil.rmtree(run / CHECKPOINTS)
        print0(f"--force: deleted the checkpoints of run {name!r}; starting it over")
    if dist.is_initialized():
        dist.barrier()  # no rank looks at the run before rank 0 has cleared it
    return None


def check_ranges(cfg, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """Numbers that cannot work, refused by flag before any compute (a NaN fails both tests)."""
    for names, ok, rule in ((positive, lambda v: v > 0, "greater than 0"),
                            (non_negative, lambda v: v >= 0, "0 or more")):
        for name in names:
            value = getattr(cfg, name)
            if value is not None and not ok(value):
                raise PicochatError(f"--{name.replace('_', '-')} {value} is not valid: it must be {rule}")


TRAIN_POSITIVE = ("depth", "aspect_ratio", "head_dim", "n_kv_heads", "max_seq_len", "num_iterations", "ratio",
                  "target_flops",
                  "total_batch_size", "device_batch_size", "eval_tokens", "loader_buffer_docs", "core_max_per_task")
TRAIN_NON_NEGATIVE = (*LR_FIELDS.values(), "weight_decay", "warmup_steps", "warmdown_ratio", "final_lr_frac",
                      "eval_every", "sample_every", "save_every", "keep_checkpoints", "log_every", "core_every")


def check_batch(total: int, device_batch_size: int, seq_len: int, world_size: int) -> int:
    """Gradient-accumulation steps that reach `total` tokens; refuses a total that does not divide."""
    per_micro_step = device_batch_size * seq_len * world_size
    if total % per_micro_step:
        lower = max(per_micro_step, total // per_micro_step * per_micro_step)
        raise PicochatError(
            f"--total-batch-size {total} is not a multiple of device_batch_size x max_seq_len x world_size = "
            f"{device_batch_size} x {seq_len} x {world_size} = {per_micro_step}; use --total-batch-size {lower} "
            f"or {lower + per_micro_step}, or change --device-batch-size")
    return total // per_micro_step


def resolve(cfg: TrainConfig, plan: Plan, tokenizer: Tokenizer, runtime: Runtime) -> TrainConfig:
    derived = {
        "tokenizer": tokenizer.name, "run": cfg.run_name(), "num_iterations": plan.num_steps,
        "total_batch_size": plan.total_batch_size, "weight_decay": plan.weight_decay,
        "warmup_steps": plan.warmup_steps, "ratio": None if cfg.target_flops else plan.constants.ratio,
        "device": runtime.device.type, "dtype": dtype_name(runtime.dtype),
        "compile": default_compile(runtime.device.type, plan.flops_per_token * plan.tokens,
                                   cpu_peak_flops()[0] if runtime.device.type == "cpu" else None),
        **{field: plan.learning_rates[group] for group, field in LR_FIELDS.items()},
    }
    return dataclasses.replace(cfg, **{k: v for k, v in derived.items() if getattr(cfg, k) is None})


def load_tokenizer(cfg: TrainConfig) -> Tokenizer:
    return Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else Tokenizer.default_for_dataset(cfg.dataset)


def prepare_run(cfg: TrainConfig, explicit: set[str] | None, runtime: Runtime) -> RunSetup:
    explicit = default_explicit(cfg) if explicit is None else explicit
    check_ranges(cfg, TRAIN_POSITIVE, TRAIN_NON_NEGATIVE)
    run = run_dir(cfg.run_name())
    resume_from = resume_point(run, cfg.run_name(), cfg.resume, cfg.force, runtime)
    if resume_from is not None:
        cfg = merge_resumed(cfg, read_meta(resume_from)["run_config"], explicit, resume_from)
    dataset = open_dataset(cfg.dataset)
    tokenizer = load_tokenizer(cfg)
    shape = model_config(cfg, tokenizer.vocab_size)
    if resume_from is not None:
        saved_shape = GPTConfig(**read_meta(resume_from)["model_config"])  # a flag it predates: its default
        check_same_shape(dataclasses.asdict(shape), dataclasses.asdict(saved_shape), resume_from)
    plan = make_plan(cfg.depth, tokenizer.vocab_size, cfg.aspect_ratio, cfg.head_dim, cfg.max_seq_len,
                     cfg.window_pattern, cfg.ratio, cfg.total_batch_size, cfg.num_iterations,
                     constants=load_constants(cfg.constants) if cfg.constants else None,
                     n_kv_heads=cfg.n_kv_heads, smear=cfg.smear, backout=cfg.backout,
                     # a resumed run keeps the steps its budget gave (saved in num_iterations)
                     target_flops=cfg.target_flops if resume_from is None else None)
    cfg = resolve(cfg, plan, tokenizer, runtime)
    if cfg.device_batch_size is None:  # --device-batch-size auto
        cfg = dataclasses.replace(cfg, device_batch_size=fit_device_batch(shape, cfg.total_batch_size,
                                                                          cfg.max_seq_len, runtime))
    accum = check_batch(cfg.total_batch_size, cfg.device_batch_size, cfg.max_seq_len, runtime.world_size)
    if cfg.fp8:
        check_fp8(runtime, cfg.compile)
    record_run(cfg, run, runtime)
    return RunSetup(cfg, plan, dataset, tokenizer, run, resume_from, accum)


def check_same_world(meta: dict, world_size: int, checkpoint: Path) -> None:
    """Loader cursors and Muon's optimizer shards are per rank: a resume keeps the process count."""
    if meta["world_size"] != world_size:
        raise PicochatError(f"{checkpoint} was saved by {meta['world_size']} processes and this run has {world_size}; "
                            f"resume with torchrun --nproc_per_node={meta['world_size']} (or 1 process for 1)")


def check_same_shape(now: dict, saved: dict, checkpoint: Path) -> None:
    diff = [f"{k}: {saved.get(k)} -> {v}" for k, v in now.items() if saved.get(k) != v]
    if diff:
        raise PicochatError(f"--resume: the model would differ from the one in {checkpoint} ({'; '.join(diff)}); "
                            f"resume with the original tokenizer and shape, or start a new run with --run NEW")


def git_provenance() -> dict:
    repo = Path(picochat.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def record_run(cfg, run: Path, runtime: Runtime, stage: str = "train") -> None:
    """Print the resolved config; rank 0 saves config.json and env.json (provenance) in the run dir.
    Every stage (train, sft, rl) records its run this one way."""
    print0(format_config(cfg, title=f"{stage} config ({run})"))
    if not runtime.is_master:
        return
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.json")
    env = {"picochat": picochat.__version__, **git_provenance(), "torch": torch.__version__,
           "python": platform.python_version(), **runtime.describe()}
    (run / "env.json").write_text(json.dumps(env, indent=2) + "\n")
