"""`train(cfg)`: pretraining as a stage of the one loop (loop.py). What is pretraining's own: packed
documents from the dataset, the next-token loss, and its evaluations (validation bpb, CORE, samples)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from picochat.config import config_to_dict
from picochat.data.loader import PackedLoader
from picochat.eval.bpb import SplitBpb
from picochat.eval.core import evaluate_core
from picochat.eval.core_data import default_bundle_dir
from picochat.runtime import DTYPES, Runtime, init_runtime, print0
from picochat.train.build import build_model, convert_to_fp8, fp8_off, make_optimizer
from picochat.train.config import TrainConfig
from picochat.train.evaluation import greedy_continuations
from picochat.train.loop import Evaluation, LoopPlan, StepWork, run_stage
from picochat.train.setup import RunSetup, prepare_run
from picochat.train.step import next_token_loss


class Pretraining:
    loss_fn = staticmethod(next_token_loss)

    def __init__(self, run: RunSetup, runtime: Runtime, model, fp8_modules: dict):
        cfg = self.cfg = run.cfg
        self.run, self.runtime, self.model, self.fp8_modules = run, runtime, model, fp8_modules
        self.loader = self.make_loader(None)
        self.validation = SplitBpb(run.dataset, run.tokenizer, "val", cfg.device_batch_size, cfg.max_seq_len,
                                   cfg.eval_tokens, runtime.rank, runtime.world_size, runtime.device, cfg.loader_mode)
        self.core_bundle = Path(cfg.core_bundle).expanduser() if cfg.core_bundle else default_bundle_dir()
        if cfg.core_every > 0 and not (self.core_bundle / "core.yaml").is_file():
            print0(f"--core-every {cfg.core_every}: no CORE bundle at {self.core_bundle}, so no CORE during training "
                   f"(get it with `picochat eval core --download`, or pass --core-bundle DIR)")

    def make_loader(self, state: dict | None) -> PackedLoader:
        cfg, runtime = self.cfg, self.runtime
        return PackedLoader(self.run.dataset, self.run.tokenizer, "train", cfg.device_batch_size, cfg.max_seq_len,
                            rank=runtime.rank, world_size=runtime.world_size, mode=cfg.loader_mode,
                            buffer_docs=cfg.loader_buffer_docs, device=runtime.device, state=state)

    def work(self, step: int) -> StepWork:
        return StepWork(self.loader, self.run.grad_accum_steps, self.run.tokens_per_step, self.run.flops_per_step)

    def evaluations(self) -> list[Evaluation]:
        cfg = self.cfg
        evaluations = [Evaluation("val_bpb", cfg.eval_every, self.validation_bpb, at_start=True)]
        if cfg.core_every > 0 and (self.core_bundle / "core.yaml").is_file():
            evaluations.append(Evaluation("core", cfg.core_every, self.core))
        if cfg.sample_every > 0:
            evaluations.append(Evaluation("samples", cfg.sample_every, self.samples))
        return evaluations

    def validation_bpb(self) -> dict:
        with fp8_off(self.fp8_modules):
            result = self.validation(self.model)
        return {"val_bpb": result.bpb, "val_tokens": result.tokens}

    def core(self) -> dict:
        with fp8_off(self.fp8_modules):
            result = evaluate_core(self.model, self.run.tokenizer, self.core_bundle,
                                   max_per_task=self.cfg.core_max_per_task, device=self.runtime.device)
        return {"core": result.core}

    def samples(self) -> dict:
        if self.runtime.is_master:
            with fp8_off(self.fp8_modules):
                for sample in greedy_continuations(self.model, self.run.tokenizer, device=self.runtime.device):
                    print0(f"  sample: {sample!r}")
        return {}

    def checkpoint_meta(self) -> dict:
        return {"model_config": dataclasses.asdict(self.model.config), "run_config": config_to_dict(self.cfg),
                "tokenizer": self.run.tokenizer.name, "dataset": self.run.dataset.name}

    def cursor(self) -> dict:
        return self.loader.state_dict()

    def restore_cursor(self, cursor: dict) -> None:
        self.loader.close()
        self.loader = self.make_loader(cursor)

    def close(self) -> None:
        self.loader.close()


def train(cfg: TrainConfig, explicit: set[str] | None = None) -> dict:
    """Run (or resume) the training; returns the final loop state, the last evaluations and `stopped_by`."""
    runtime = init_runtime(cfg.device, seed=cfg.seed)
    run = prepare_run(cfg, explicit, runtime)
    runtime = dataclasses.replace(runtime, dtype=DTYPES[run.cfg.dtype])  # before the model is built
    model = build_model(run.plan.config, runtime)
    optimizer = make_optimizer(model, run.cfg, runtime)
    stage = Pretraining(run, runtime, model, convert_to_fp8(model) if run.cfg.fp8 else {})
    print0(f"{run.grad_accum_steps} micro-batches per step")
    plan = LoopPlan.of(run.cfg, run.run_dir, run=run.cfg.run)
    session = run_stage(stage, plan, runtime, model, optimizer, run.resume_from, run.cfg.dtype)
    return {**dataclasses.asdict(session.state), **session.results, "stopped_by": session.stopped_by}
