"""`sft(cfg)`: supervised finetuning of a run on a mixture of conversations, as a stage of the one loop.

As nanochat's chat_sft.py: sequence length and batch inherited from the base run, optimizer moments
warm-started, weight decay 0, LR × 0.8 held constant then warmed down linearly over the last half, one
epoch of the mixture by default. What is SFT's own: packed conversations with the loss on the assistant's
tokens, validation bpb on held-out conversations, and the chat evals (ChatCORE).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from picochat.errors import PicochatError
from picochat.eval.bpb import evaluate_bpb
from picochat.eval.chat import chatcore, evaluate_task
from picochat.eval.chat_cli import task_items, write_results
from picochat.model.accounting import flops_per_token
from picochat.post.base import PostRun, post_meta, post_optimizer, start_post_run
from picochat.post.config import SFT_NON_NEGATIVE, SFT_POSITIVE, SFTConfig
from picochat.post.mixture import load_mixture, mixture_conversations
from picochat.post.packing import render_all, sft_batches, sft_eval_batches
from picochat.post.sources import IDENTITY_FILE, SourceContext
from picochat.runtime import dtype_name, print0
from picochat.tasks import TASK_NAMES, TaskDataError, get_task
from picochat.train.loop import Evaluation, LoopPlan, StepWork, run_stage
from picochat.train.setup import check_batch, record_run
from picochat.train.step import next_token_loss


def resolve(cfg: SFTConfig, run: PostRun, train_tokens: int) -> SFTConfig:
    base_cfg, runtime = run.base.train_config, run.runtime
    seq_len = cfg.max_seq_len or base_cfg.max_seq_len
    if seq_len > run.base.model.config.max_seq_len:
        raise PicochatError(f"--max-seq-len {seq_len} is longer than the model's context "
                            f"{run.base.model.config.max_seq_len}; use at most that")
    cfg = dataclasses.replace(cfg, max_seq_len=seq_len, device_batch_size=cfg.device_batch_size or base_cfg.device_batch_size,
                              total_batch_size=cfg.total_batch_size or base_cfg.total_batch_size, run=cfg.run_name(),
                              device=runtime.device.type, dtype=dtype_name(runtime.dtype),
                              compile=runtime.device.type == "cuda" if cfg.compile is None else cfg.compile)
    return cfg if cfg.num_iterations else dataclasses.replace(cfg, num_iterations=max(1, math.ceil(train_tokens / cfg.total_batch_size)))


class SFT:
    loss_fn = staticmethod(next_token_loss)

    def __init__(self, run: PostRun, train: list, val: list, accum: int):
        self.cfg, self.run, self.model, self.tokenizer = run.cfg, run, run.base.model, run.base.tokenizer
        self.train, self.val, self.accum, self.drawn = train, val, accum, 0
        self.flops_per_token = flops_per_token(self.model.config, self.cfg.max_seq_len)
        self.batches = self.make_batches(0)

    def make_batches(self, skip: int):
        cfg, runtime = self.cfg, self.run.runtime
        for batch in sft_batches(self.train, cfg.device_batch_size, cfg.max_seq_len, self.tokenizer.bos_id,
                                 runtime.device, runtime.rank, runtime.world_size, skip=skip):
            self.drawn += 1
            yield batch

    def work(self, step: int) -> StepWork:
        tokens = self.cfg.total_batch_size
        return StepWork(self.batches, self.accum, tokens, self.flops_per_token * tokens)

    def evaluations(self) -> list[Evaluation]:
        evaluations = [Evaluation("val_bpb", self.cfg.eval_every, self.validation_bpb)] if self.val else []
        return evaluations + ([Evaluation("chat", self.cfg.chat_eval_every, self.chat_eval)] if self.cfg.chat_eval else [])

    def validation_bpb(self) -> dict:
        """bpb on the held-out conversations' assistant tokens, each row once."""
        cfg, runtime = self.cfg, self.run.runtime
        batches = sft_eval_batches(self.val, cfg.device_batch_size, cfg.max_seq_len, self.tokenizer.bos_id,
                                   runtime.device, runtime.rank, runtime.world_size)
        return {"val_bpb": evaluate_bpb(self.model, batches, self.tokenizer.token_bytes())}

    def chat_eval(self) -> dict:
        """ChatCORE on the chat tasks whose data is here (`chat_eval_max_problems` each); chat_eval.json too."""
        results = []
        for name in TASK_NAMES:
            try:
                items = task_items(task := get_task(name, self.cfg.data_dir), self.cfg.chat_eval_max_problems)
            except TaskDataError as e:
                print0(f"chat eval: skipping {name} ({e})")
                continue
            results.append(evaluate_task(self.model, self.tokenizer, task, items, self.cfg.device_batch_size))
        if results and self.run.runtime.is_master:
            write_results(results, self.run.run_dir, None)
        return {"chatcore": chatcore(results), "chat_eval": {r.task: r.accuracy for r in results}} if results else {}

    def checkpoint_meta(self) -> dict:
        return post_meta(self.model, self.cfg, self.run.base, "sft")

    def cursor(self) -> dict:
        return {"batches": self.drawn}

    def restore_cursor(self, cursor: dict) -> None:
        self.drawn = cursor["batches"]
        self.batches = self.make_batches(self.drawn)

    def close(self) -> None:
        pass


def sft(cfg: SFTConfig, explicit: set[str] | None = None) -> dict:
    """Finetune (or --resume), saving before the final evaluations; returns the loop state, the last
    evaluations, "checkpoint" and "stopped_by"."""
    load_mixture(cfg.mixture)  # refusals before any compute
    run = start_post_run(cfg, explicit, SFT_POSITIVE, SFT_NON_NEGATIVE)
    cfg = run.cfg
    ctx = SourceContext(Path(cfg.data_dir).expanduser() if cfg.data_dir else None,
                        Path(cfg.identity).expanduser() if cfg.identity else IDENTITY_FILE, cfg.seed)
    conversations = mixture_conversations(load_mixture(cfg.mixture), ctx)
    held_out = min(cfg.val_conversations, len(conversations) // 10)
    rendered, cut = render_all(run.base.tokenizer, conversations, (cfg.max_seq_len or run.base.train_config.max_seq_len) + 1)
    val, train = rendered[:held_out], rendered[held_out:]
    cfg = run.cfg = resolve(cfg, run, sum(len(ids) for ids, _ in train))
    accum = check_batch(cfg.total_batch_size, cfg.device_batch_size, cfg.max_seq_len, run.runtime.world_size)
    record_run(cfg, run.run_dir, run.runtime, "sft")
    print0(f"{len(train):,} training conversations ({cut:,} cut to {cfg.max_seq_len + 1} tokens, "
           f"{len(conversations) - len(rendered):,} dropped with nothing left to train on), {held_out} held out; "
           f"{cfg.num_iterations} steps of {cfg.total_batch_size:,} tokens ({accum} micro-batches)")
    optimizer = post_optimizer(run.base, run.runtime, cfg.lr_scale)
    plan = LoopPlan.of(cfg, run.run_dir, warmup_steps=0, final_lr_frac=0.0)
    session = run_stage(SFT(run, train, val, accum), plan, run.runtime, run.base.model, optimizer, run.resume_from, cfg.dtype)
    return {**dataclasses.asdict(session.state), **session.results, "checkpoint": session.last_checkpoint,
            "stopped_by": session.stopped_by, "tok_per_sec": session.state.tokens / max(session.state.train_time, 1e-9)}
