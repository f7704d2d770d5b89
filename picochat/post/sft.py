"""`sft(cfg)`: supervised finetuning of a run on a mixture of conversations.

Reference facts, "Post-training": sequence length and batch inherited from the base run, optimizer
moments warm-started, weight decay 0, LR × 0.8 held constant then warmed down linearly over the last
half, one epoch of the mixture by default. The step, schedules, logger and checkpointer are
pretraining's (picochat/train); only the data (packed conversations, loss on the assistant's tokens)
is SFT's own.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from picochat.config import config_to_dict, field_help
from picochat.errors import PicochatError
from picochat.eval.bpb import evaluate_bpb
from picochat.eval.chat import chatcore, evaluate_task
from picochat.model.accounting import flops_per_token
from picochat.post.base import (BaseRun, check_new_run, load_base_run, post_optimizer, record_post_run,
                                 save_post_checkpoint)
from picochat.post.mixture import load_mixture, mixture_conversations
from picochat.post.packing import sft_batches
from picochat.post.sources import IDENTITY_FILE, SourceContext
from picochat.runtime import DTYPES, init_runtime, print0
from picochat.tasks import TASK_NAMES, TaskDataError, get_task
from picochat.tokenizer.chat import render_conversation
from picochat.train.evaluation import is_due
from picochat.train.lifecycle import LoopState, check_finite_loss
from picochat.train.metrics import make_logger
from picochat.train.mfu import model_flops_utilization, peak_flops
from picochat.train.schedule import apply_schedules
from picochat.train.setup import check_batch
from picochat.train.step import GradScaler, train_step



@dataclass
class SFTConfig:
    from_run: str | None = field(default=None, metadata=field_help("the run (or checkpoint folder) to finetune; also --from"))
    step: int | None = field(default=None, metadata=field_help("which checkpoint of --from; derived: the latest"))
    run: str | None = field(default=None, metadata=field_help("the new run's name; derived: {from}-sft"))
    mixture: str = field(default="default", metadata=field_help("built-in mixture (default, offline) or a .yaml/.json file"))
    data_dir: str | None = field(default=None, metadata=field_help("folder with gsm8k/, arc/, mmlu/ for local sources"))
    identity: str | None = field(default=None, metadata=field_help("identity conversations (jsonl); derived: picochat/post/identity.jsonl"))
    num_iterations: int | None = field(default=None, metadata=field_help("optimizer steps; derived: one epoch of the mixture"))
    max_seq_len: int | None = field(default=None, metadata=field_help("tokens per row; derived: the base run's"))
    device_batch_size: int | None = field(default=None, metadata=field_help("rows per micro-batch; derived: the base run's"))
    total_batch_size: int | None = field(default=None, metadata=field_help("tokens per step; derived: the base run's"))
    lr_scale: float = field(default=0.8, metadata=field_help("the base run's learning rates times this"))
    warmdown_ratio: float = field(default=0.5, metadata=field_help("fraction of steps in the final linear warm-down to 0"))
    warm_start: bool = field(default=True, metadata=field_help("start from the base run's optimizer moments when saved"))
    val_conversations: int = field(default=500, metadata=field_help("conversations held out for validation bpb"))
    eval_every: int = field(default=200, metadata=field_help("validation bpb every N steps (0: at the end only)"))
    chat_eval: bool = field(default=True, metadata=field_help("run the chat evals at the end"))
    chat_eval_max_problems: int = field(default=200, metadata=field_help("problems per chat eval task at the end"))
    save_every: int = field(default=0, metadata=field_help("checkpoint every N steps (0: at the end only)"))
    log_every: int = field(default=10, metadata=field_help("console progress line every N steps"))
    wandb: bool = field(default=False, metadata=field_help("also log to wandb (when installed)"))
    device: str | None = field(default=None, metadata=field_help("cuda, mps or cpu; derived: autodetect"))
    dtype: str | None = field(default=None, metadata=field_help("compute dtype; derived: the runtime's",
                                                           choices=["float32", "bfloat16", "float16"]))
    compile: bool | None = field(default=None, metadata=field_help("torch.compile the model; derived: on for CUDA"))
    seed: int = field(default=42, metadata=field_help("random seed (mixture order, generated data)"))

    def run_name(self) -> str:
        return self.run or f"{Path(str(self.from_run)).name}-sft"


def render_all(tokenizer, conversations: list[dict], row_len: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Every conversation as (ids, mask), cut to one row; returns them and how many were cut.

    One whose cut leaves no assistant token is dropped: a micro-batch of such rows has no target
    and its mean loss would be 0/0."""
    rendered, cut = [], 0
    for i, conversation in enumerate(conversations):
        ids, mask = render_conversation(tokenizer, conversation)
        if len(ids) > row_len:
            ids, mask, cut = ids[:row_len], mask[:row_len], cut + 1
        if any(mask[1:]):
            rendered.append((ids, mask))
        if (i + 1) % 100_000 == 0:
            print0(f"  rendered {i + 1:,} / {len(conversations):,} conversations")
    return rendered, cut


def resolve(cfg: SFTConfig, base: BaseRun, runtime, train_tokens: int) -> SFTConfig:
    base_cfg = base.train_config
    seq_len = cfg.max_seq_len or base_cfg.max_seq_len
    if seq_len > base.model.config.max_seq_len:
        raise PicochatError(f"--max-seq-len {seq_len} is longer than the model's context "
                            f"{base.model.config.max_seq_len}; use at most that")
    derived = {"max_seq_len": seq_len, "device_batch_size": cfg.device_batch_size or base_cfg.device_batch_size,
               "total_batch_size": cfg.total_batch_size or base_cfg.total_batch_size, "run": cfg.run_name(),
               "device": runtime.device.type, "dtype": str(runtime.dtype).removeprefix("torch."),
               "compile": runtime.device.type == "cuda" if cfg.compile is None else cfg.compile}
    cfg = dataclasses.replace(cfg, **derived)
    if cfg.num_iterations is None:
        cfg = dataclasses.replace(cfg, num_iterations=max(1, math.ceil(train_tokens / cfg.total_batch_size)))
    return cfg


def sft(cfg: SFTConfig) -> dict:
    """Finetune, evaluate, save; returns {"step", "val_bpb", "chat_eval", "checkpoint"}."""
    runtime = init_runtime(cfg.device, seed=cfg.seed)
    mixture = load_mixture(cfg.mixture)  # refusals before any compute
    run_path = check_new_run(cfg.run_name())
    base = load_base_run(cfg.from_run, runtime, cfg.step)
    if cfg.dtype:
        runtime = dataclasses.replace(runtime, dtype=DTYPES[cfg.dtype])
    ctx = SourceContext(Path(cfg.data_dir).expanduser() if cfg.data_dir else None,
                        Path(cfg.identity).expanduser() if cfg.identity else IDENTITY_FILE, cfg.seed)
    conversations = mixture_conversations(mixture, ctx)
    held_out = min(cfg.val_conversations, len(conversations) // 10)
    row_len = (cfg.max_seq_len or base.train_config.max_seq_len) + 1
    rendered, cut = render_all(base.tokenizer, conversations, row_len)
    val, train = rendered[:held_out], rendered[held_out:]
    cfg = resolve(cfg, base, runtime, sum(len(ids) for ids, _ in train))
    accum = check_batch(cfg.total_batch_size, cfg.device_batch_size, cfg.max_seq_len, runtime.world_size)
    record_post_run(cfg, run_path, runtime, "sft")
    print0(f"{len(train):,} training conversations ({cut:,} cut to {row_len} tokens, "
           f"{len(conversations) - len(rendered):,} dropped with nothing left to train on), {held_out} held out; "
           f"{cfg.num_iterations} steps of {cfg.total_batch_size:,} tokens ({accum} micro-batches)")
    return SFTSession(cfg, base, runtime, train, val, accum, run_path).run()


class SFTSession:
    """The loop and the helpers it calls; the model, optimizer and data built once."""

    def __init__(self, cfg: SFTConfig, base: BaseRun, runtime, train, val, accum: int, run_path: Path):
        self.cfg, self.base, self.runtime, self.val, self.accum, self.run_path = cfg, base, runtime, val, accum, run_path
        self.model = base.model
        self.trained = torch.compile(self.model, dynamic=False) if cfg.compile else self.model
        self.optimizer = post_optimizer(base, runtime, cfg.lr_scale, cfg.warm_start)
        self.scaler = GradScaler(enabled=runtime.dtype == torch.float16)
        self.pad_id = base.tokenizer.bos_id
        self.batches = sft_batches(train, cfg.device_batch_size, cfg.max_seq_len, self.pad_id, runtime.device,
                                   runtime.rank, runtime.world_size)
        self.state = LoopState()
        self.logger = make_logger(run_path, cfg.run, config_to_dict(cfg), cfg.num_iterations, runtime.is_master,
                                  cfg.wandb, cfg.log_every)
        self.flops_per_token = flops_per_token(self.model.config, cfg.max_seq_len)
        self.peak, _ = peak_flops(runtime.device, runtime.describe()["device_name"])

    def run(self) -> dict:
        cfg, state = self.cfg, self.state
        try:
            while state.step < cfg.num_iterations:
                lrm = apply_schedules(self.optimizer, state.step, cfg.num_iterations, 0, cfg.warmdown_ratio, 0.0)
                start = time.perf_counter()
                result = train_step(self.trained, self.optimizer, self.batches, self.accum, self.scaler)
                seconds = time.perf_counter() - start
                check_finite_loss(result.loss, state.step + 1, "none: SFT saves at the end")
                state.advance(seconds, cfg.total_batch_size, self.flops_per_token * cfg.total_batch_size)
                record = self.measure(result.loss, seconds, lrm)
                if self.val and is_due(state.step, cfg.eval_every, cfg.num_iterations):
                    state.val_bpb = record["val_bpb"] = self.validation_bpb()
                self.logger.log(record)
                if cfg.save_every > 0 and is_due(state.step, cfg.save_every, cfg.num_iterations):
                    self.save()
        finally:
            self.logger.close()
        checkpoint = self.save()
        chat = self.chat_eval() if cfg.chat_eval else None
        return {"step": state.step, "val_bpb": state.val_bpb, "chat_eval": chat, "checkpoint": str(checkpoint),
                "tok_per_sec": state.tokens / max(state.train_time, 1e-9)}

    def measure(self, loss: float, seconds: float, lrm: float) -> dict:
        state = self.state
        tok_per_sec = self.cfg.total_batch_size / seconds
        mfu = model_flops_utilization(self.flops_per_token, tok_per_sec, self.peak, self.runtime.world_size)
        lr = self.optimizer.param_groups[-1]["initial_lr"] * lrm
        return {"step": state.step, "tokens": state.tokens, "flops": state.flops, "time": state.train_time,
                "loss": loss, "lr": lr, "lrm": lrm, "tok_per_sec": tok_per_sec, "mfu": mfu}

    def validation_bpb(self) -> float:
        """bpb on the held-out conversations' assistant tokens (the same rows every time)."""
        batches = sft_batches(self.val, self.cfg.device_batch_size, self.cfg.max_seq_len, self.pad_id,
                              self.runtime.device, self.runtime.rank, self.runtime.world_size)
        rows = sum(len(ids) for ids, _ in self.val) // (self.cfg.max_seq_len + 1) + 1
        steps = max(1, rows // (self.cfg.device_batch_size * self.runtime.world_size))
        token_bytes = self.base.tokenizer.token_bytes()
        return evaluate_bpb(self.model, (next(batches) for _ in range(steps)), token_bytes)

    def save(self) -> Path:
        return save_post_checkpoint(self.run_path, self.state.step, self.model, self.optimizer, self.base, "sft",
                                    self.cfg, dataclasses.asdict(self.state))

    def chat_eval(self) -> dict:
        """The chat evals on the first `chat_eval_max_problems` items of every task whose data is here."""
        scores, results = {}, []
        for name in TASK_NAMES:
            task = get_task(name, self.cfg.data_dir)
            try:
                items = task.load()[:self.cfg.chat_eval_max_problems]
            except TaskDataError as e:
                print0(f"chat eval: skipping {name} ({e})")
                continue
            result = evaluate_task(self.model, self.base.tokenizer, task, items, self.cfg.device_batch_size)
            results.append(result)
            scores[name] = result.accuracy
            print0(f"chat eval: {name} {result.accuracy:.4f} ({result.correct}/{result.total})")
        if results:
            scores["chatcore"] = chatcore(results)
            print0(f"chat eval: ChatCORE {scores['chatcore']:.4f}")
        (self.run_path / "chat_eval.json").write_text(json.dumps(scores, indent=2) + "\n")
        return scores
