"""`rl(cfg)`: on-policy RL on a task whose answers can be checked (reference facts, "Post-training").

Each step: k completions per problem sampled with the engine (calculator live), reward 1 for a correct
final answer, advantage = reward − the group's mean (no σ, no KL, no reference model, no clipping), and a
policy-gradient step on −Σ adv·log p over the sampled tokens only (prompt and tool output masked),
normalised per token. The step, schedules, logger and checkpointer are pretraining's.
"""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from picochat.config import field_help
from picochat.errors import PicochatError
from picochat.infer.engine import Engine, SamplingParams
from picochat.post import generated
from picochat.post.base import check_new_run, load_base_run, post_optimizer, record_post_run, save_post_checkpoint
from picochat.post.packing import IGNORE
from picochat.runtime import DTYPES, init_runtime, print0
from picochat.tasks.base import last_number_matches, prompt_conversation
from picochat.tasks.gsm8k import Gsm8kTask
from picochat.tasks.spelling import SpellingTask
from picochat.tokenizer.chat import assistant_parts, render_for_completion
from picochat.train.evaluation import is_due
from picochat.train.lifecycle import LoopState, check_finite_loss
from picochat.train.metrics import METRICS_FILE, JsonlLogger
from picochat.train.schedule import apply_schedules
from picochat.train.step import GradScaler, train_step

TASKS = ("gsm8k", "arithmetic", "spelling")



@dataclass
class RLConfig:
    from_run: str | None = field(default=None, metadata=field_help("the run (usually an SFT run) to improve; also --from"))
    step: int | None = field(default=None, metadata=field_help("which checkpoint of --from; derived: the latest"))
    run: str | None = field(default=None, metadata=field_help("the new run's name; derived: {from}-rl"))
    task: str = field(default="gsm8k", metadata=field_help("the task with a verifiable reward", choices=list(TASKS)))
    data_dir: str | None = field(default=None, metadata=field_help("folder holding gsm8k/train.jsonl; "
                                                               "derived: $PICOCHAT_HOME/tasks"))
    num_iterations: int = field(default=100, metadata=field_help("optimizer steps"))
    problems_per_step: int = field(default=16, metadata=field_help("problems sampled per step"))
    max_problems: int | None = field(default=None, metadata=field_help("cycle through only the first N (shuffled) problems"))
    samples_per_problem: int = field(default=16, metadata=field_help("completions per problem (k of pass@k)"))
    max_new_tokens: int = field(default=256, metadata=field_help("tokens per completion at most"))
    temperature: float = field(default=1.0, metadata=field_help("sampling temperature"))
    top_k: int = field(default=50, metadata=field_help("sample among the k most likely tokens"))
    device_batch_size: int = field(default=8, metadata=field_help("completions per forward/backward micro-batch"))
    lr_scale: float = field(default=0.05, metadata=field_help("the base run's learning rates times this, decaying to 0"))
    save_every: int = field(default=60, metadata=field_help("checkpoint every N steps (and at the end)"))
    device: str | None = field(default=None, metadata=field_help("cuda, mps or cpu; derived: autodetect"))
    dtype: str | None = field(default=None, metadata=field_help("compute dtype; derived: the runtime's",
                                                           choices=["float32", "bfloat16", "float16"]))
    seed: int = field(default=42, metadata=field_help("random seed (problem order, sampling)"))

    def run_name(self) -> str:
        return self.run or f"{Path(str(self.from_run)).name}-rl"


# --- tasks: problems (a prompt conversation and an answer) and a reward ----------------------

def arithmetic_problems(count: int, seed: int) -> list[dict]:
    return [{"messages": generated.arithmetic_conversation(*item)["messages"][:1],
             "answer": str(generated.eval_arithmetic(*item))} for item in generated.arithmetic_items(count, seed)]


def load_problems(task: str, data_dir: str | None, seed: int) -> list[dict]:
    if task == "gsm8k":
        return Gsm8kTask(data_dir).load("train")
    if task == "spelling":
        return SpellingTask(data_dir).load("train")
    return arithmetic_problems(10_000, seed)


def reward(task: str, item: dict, text: str) -> float:
    if task == "spelling":
        return float(SpellingTask().score(item, text))
    return float(last_number_matches(text, item["answer"]))


# --- sampling and the policy-gradient batch (pure but for the engine) ------------------------

def sampled_mask(tokens: list[int], output_start: int, output_end: int) -> list[int]:
    """1 on tokens the policy sampled, 0 on the tool output the engine forced (output_start … output_end)."""
    mask, inside = [], False
    for token in tokens:
        inside = inside or token == output_start
        mask.append(0 if inside else 1)
        if token == output_end:
            inside = False
    return mask


def sample_rows(engine: Engine, prompt: list[int], params: SamplingParams) -> list[list[int]]:
    """Each sample's tokens including its stop token (so the policy learns to stop)."""
    rows: list[list[int]] = [[] for _ in range(params.num_samples)]
    for step_tokens in engine.generate(prompt, params):
        for row, token in zip(rows, step_tokens):
            if token is not None:
                row.append(token)
    return rows


def advantages(rewards: list[float]) -> list[float]:
    """Reward minus the group's mean (reference facts: no division by σ)."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def pg_examples(prompt: list[int], rows: list[list[int]], advs: list[float], output_start: int, output_end: int):
    """(inputs, targets, advantage) per completion: targets only on the sampled completion tokens."""
    examples = []
    for row, adv in zip(rows, advs):
        ids = prompt + row
        mask = [0] * len(prompt) + sampled_mask(row, output_start, output_end)
        targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]
        examples.append((ids[:-1], targets, adv))
    return examples


def collate(examples, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(inputs) for inputs, _, _ in examples)
    inputs = torch.tensor([x + [pad_id] * (length - len(x)) for x, _, _ in examples], device=device)
    targets = torch.tensor([t + [IGNORE] * (length - len(t)) for _, t, _ in examples], device=device)
    return inputs, targets, torch.tensor([a for _, _, a in examples], dtype=torch.float32, device=device)


def policy_gradient_loss(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
    """−Σ adv·log p over the sampled tokens, divided by their number (token-level normalisation)."""
    inputs, targets, advs = batch
    nats = model(inputs, targets, loss_reduction="none")  # −log p, 0 where the target is -1
    return (nats * advs[:, None]).sum() / (targets >= 0).sum().clamp(min=1)


def sample_problems(engine: Engine, problems: list[dict], step: int, cfg: RLConfig, output_start: int,
                    output_end: int) -> tuple[list, list[float], int, int]:
    """This step's problems, k samples each: (pg examples, rewards, problems solved, sampled tokens)."""
    examples, rewards, solved, sampled = [], [], 0, 0
    for i in range(cfg.problems_per_step):
        index = step * cfg.problems_per_step + i
        item = problems[index % len(problems)]
        prompt = render_for_completion(engine.tokenizer, prompt_conversation(item))
        params = SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                seed=cfg.seed + index * cfg.samples_per_problem, num_samples=cfg.samples_per_problem)
        rows = sample_rows(engine, prompt, params)
        group = [reward(cfg.task, item, completion_text(engine.tokenizer, row)) for row in rows]
        rewards += group
        solved += any(r > 0 for r in group)
        sampled += sum(len(row) for row in rows)
        examples += pg_examples(prompt, rows, advantages(group), output_start, output_end)
    return examples, rewards, solved, sampled


# --- the loop ---------------------------------------------------------------------------------

def rl(cfg: RLConfig) -> dict:
    """Returns {"step", "rewards" (mean reward per step), "checkpoint"}."""
    if cfg.task not in TASKS:
        raise PicochatError(f"--task {cfg.task!r} is not known; the RL tasks are {', '.join(TASKS)}")
    runtime = init_runtime(cfg.device, seed=cfg.seed)
    run_path = check_new_run(cfg.run_name())
    base = load_base_run(cfg.from_run, runtime, cfg.step)
    if cfg.dtype:
        runtime = dataclasses.replace(runtime, dtype=DTYPES[cfg.dtype])
    problems = load_problems(cfg.task, cfg.data_dir, cfg.seed)
    random.Random(cfg.seed).shuffle(problems)
    problems = problems[:cfg.max_problems] if cfg.max_problems else problems
    cfg = dataclasses.replace(cfg, run=cfg.run_name(), device=runtime.device.type,
                              dtype=str(runtime.dtype).removeprefix("torch."))
    record_post_run(cfg, run_path, runtime, "rl")
    model, tokenizer = base.model, base.tokenizer
    engine = Engine(model, tokenizer)
    optimizer = post_optimizer(base, runtime, cfg.lr_scale)
    scaler, state = GradScaler(enabled=runtime.dtype == torch.float16), LoopState()
    logger = JsonlLogger(run_path / METRICS_FILE)
    output_start, output_end = tokenizer.special_id("<|output_start|>"), tokenizer.special_id("<|output_end|>")
    mean_rewards, checkpoint = [], None
    try:
        while state.step < cfg.num_iterations:
            lrm = apply_schedules(optimizer, state.step, cfg.num_iterations, 0, 1.0, 0.0)  # linear decay to 0
            start = time.perf_counter()
            batch = sample_problems(engine, problems, state.step, cfg, output_start, output_end)
            examples, rewards, solved, sampled = batch
            sample_seconds = time.perf_counter() - start
            batches = [collate(examples[j:j + cfg.device_batch_size], tokenizer.bos_id, runtime.device)
                       for j in range(0, len(examples), cfg.device_batch_size)]
            result = train_step(model, optimizer, iter(batches), len(batches), scaler, loss_fn=policy_gradient_loss)
            seconds = time.perf_counter() - start
            check_finite_loss(result.loss, state.step + 1, str(checkpoint or "none yet"))
            state.advance(seconds, sampled, 0.0)
            mean_rewards.append(sum(rewards) / len(rewards))
            record = {"step": state.step, "tokens": state.tokens, "flops": state.flops, "time": state.train_time,
                      "loss": result.loss, "lr": optimizer.param_groups[-1]["initial_lr"] * lrm, "lrm": lrm,
                      "tok_per_sec": sampled / seconds, "mfu": 0.0, "mean_reward": mean_rewards[-1],
                      f"pass@{cfg.samples_per_problem}": solved / cfg.problems_per_step,
                      "samples_per_sec": len(rewards) / sample_seconds, "sample_time": sample_seconds}
            logger.log(record)
            print0(f"step {state.step:>5d}/{cfg.num_iterations} | mean reward {mean_rewards[-1]:.3f} | "
                   f"pass@{cfg.samples_per_problem} {solved / cfg.problems_per_step:.3f} | loss {result.loss:+.4f} | "
                   f"{record['samples_per_sec']:.1f} samples/s | {seconds:.1f} s")
            if is_due(state.step, cfg.save_every, cfg.num_iterations):
                checkpoint = save_post_checkpoint(run_path, state.step, model, optimizer, base, "rl", cfg,
                                                  dataclasses.asdict(state))
    finally:
        logger.close()
    return {"step": state.step, "rewards": mean_rewards, "checkpoint": str(checkpoint)}


def completion_text(tokenizer, row: list[int]) -> str:
    """What the assistant said in text (tool calls and outputs left out), for the answer check."""
    return "".join(part["text"] for part in assistant_parts(tokenizer, row) if part["type"] == "text")
