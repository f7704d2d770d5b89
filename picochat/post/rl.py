"""`rl(cfg)`: on-policy RL on a task whose answers can be checked, as a stage of the one loop.

As nanochat's chat_rl.py: each step, k completions per problem sampled with the engine (calculator live),
reward 1 for a correct final answer, advantage = reward − the group's mean (no σ, no KL, no reference
model, no clipping), and a policy-gradient step on −Σ adv·log p over the sampled tokens only (prompt and
tool output masked), normalised per token. Under torchrun each rank samples its share of the step's
problems. Held-out problems are scored by pass@k every `eval_every` steps.
"""
from __future__ import annotations

import copy
import dataclasses
import random
import time

import torch

from picochat.errors import PicochatError
from picochat.eval.chat import evaluate_generative
from picochat.infer.engine import Engine, SamplingParams
from picochat.model.accounting import flops_per_token
from picochat.model.gpt import GPT
from picochat.post import generated
from picochat.post.base import PostRun, post_meta, post_optimizer, start_post_run
from picochat.post.config import RL_NON_NEGATIVE, RL_POSITIVE, TASKS, RLConfig
from picochat.post.policy_gradient import advantages, collate, pg_examples, policy_gradient_loss, sample_rows
from picochat.runtime import dtype_name
from picochat.tasks.base import Task, answer_text, prompt_conversation
from picochat.tasks.gsm8k import Gsm8kTask
from picochat.tasks.spelling import SpellingTask
from picochat.tokenizer.chat import render_for_completion
from picochat.train.loop import Evaluation, LoopPlan, StepWork, run_stage
from picochat.train.setup import record_run
from picochat.train.step import all_reduce_sum


def arithmetic_problems(count: int, seed: int) -> list[dict]:
    return [{"messages": generated.arithmetic_conversation(*item)["messages"][:1],
             "answer": str(generated.eval_arithmetic(*item))} for item in generated.arithmetic_items(count, seed)]


def load_problems(task: str, data_dir: str | None, seed: int) -> list[dict]:
    if task == "gsm8k":
        return Gsm8kTask(data_dir).load("train")
    if task == "spelling":
        return SpellingTask(data_dir).load("train")
    return arithmetic_problems(10_000, seed)


def scorer(task: str) -> Task:
    """The task whose `score` is the reward: arithmetic answers are checked as GSM8K's (the last number)."""
    return SpellingTask() if task == "spelling" else Gsm8kTask()


def sample_problems(engine: Engine, problems: list[dict], indices: range, cfg: RLConfig, output_start: int,
                    output_end: int) -> tuple[list, list[float], int, int]:
    """The problems at `indices`, k samples each: (pg examples, rewards, problems solved, sampled tokens)."""
    examples, rewards, solved, sampled = [], [], 0, 0
    for index in indices:
        item = problems[index % len(problems)]
        prompt = render_for_completion(engine.tokenizer, prompt_conversation(item))
        params = SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                seed=cfg.seed + index * cfg.samples_per_problem, num_samples=cfg.samples_per_problem)
        rows = sample_rows(engine, prompt, params)
        group = [float(scorer(cfg.task).score(item, answer_text(engine.tokenizer, row))) for row in rows]
        rewards += group
        solved += any(r > 0 for r in group)
        sampled += sum(len(row) for row in rows)
        examples += pg_examples(prompt, rows, advantages(group), output_start, output_end)
    return examples, rewards, solved, sampled


def rollout_model(model: GPT) -> GPT:
    """What the rollouts decode with: the training model itself in fp32; under a lower compute dtype, a copy that
    holds its matrices in that dtype (`GPT.for_inference`), refreshed from the training weights before each rollout.
    Decoding the training model would cast every fp32 master weight on every decode step (read 4 bytes, write 2,
    read 2, where 2 do); the refresh casts once a step. The cast is the same, so the samples are the ones the
    training model would draw, token for token (tests/test_rl.py); a d4 in bf16 on a CPU, 8 samples of 64 tokens,
    rolled out in 433 ms against 487 ms (benchmarks/RESULTS.md)."""
    if model.compute_dtype == torch.float32:
        return model
    return copy.deepcopy(model).for_inference()


@torch.no_grad()
def refresh(policy: GPT, model: GPT) -> None:
    """The rollout copy takes the training model's current weights (nothing to do when they are one model)."""
    if policy is not model:
        for target, source in zip(policy.parameters(), model.parameters(), strict=True):
            target.copy_(source)


class RL:
    loss_fn = staticmethod(policy_gradient_loss)

    def __init__(self, run: PostRun, problems: list[dict], held_out: list[dict]):
        self.cfg, self.run, self.model, self.tokenizer = run.cfg, run, run.base.model, run.base.tokenizer
        self.problems, self.held_out, self.mean_rewards = problems, held_out, []
        self.policy = rollout_model(self.model)
        self.engine = Engine(self.policy, self.tokenizer)
        self.tool_output = (self.tokenizer.special_id("<|output_start|>"), self.tokenizer.special_id("<|output_end|>"))
        self.forward_flops = flops_per_token(self.model.config, self.model.config.max_seq_len) / 3  # ~2N a token

    def work(self, step: int) -> StepWork:
        """This rank's share of the step's problems (problem i to rank i % world), sampled, as micro-batches."""
        cfg, runtime = self.cfg, self.run.runtime
        start = time.perf_counter()
        first = step * cfg.problems_per_step
        mine = range(first + runtime.rank, first + cfg.problems_per_step, runtime.world_size)
        refresh(self.policy, self.model)
        examples, rewards, solved, sampled = sample_problems(self.engine, self.problems, mine, cfg, *self.tool_output)
        self.model.train()
        trained = sum(len(inputs) for inputs, _, _ in examples)
        count, reward_sum, solved, sampled, trained = all_reduce_sum(
            [len(rewards), sum(rewards), solved, sampled, trained], runtime.device)
        self.mean_rewards.append(reward_sum / count)
        batches = [collate(examples[j:j + cfg.device_batch_size], self.tokenizer.bos_id, runtime.device)
                   for j in range(0, len(examples), cfg.device_batch_size)]
        record = {"mean_reward": self.mean_rewards[-1], f"pass@{cfg.samples_per_problem}": solved / cfg.problems_per_step,
                  "sample_time": time.perf_counter() - start}
        return StepWork(iter(batches), len(batches), int(sampled),
                        self.forward_flops * (sampled + 3 * trained), record)

    def evaluations(self) -> list[Evaluation]:
        return [Evaluation("heldout", self.cfg.eval_every, self.pass_at_k)] if self.held_out else []

    def pass_at_k(self) -> dict:
        cfg = self.cfg
        refresh(self.policy, self.model)
        result = evaluate_generative(self.engine, scorer(cfg.task), self.held_out, cfg.samples_per_problem,
                                     cfg.max_new_tokens, cfg.temperature, cfg.top_k, seed=cfg.seed + 1)
        self.model.train()
        return {"heldout_pass@k": result.accuracy, "heldout_pass@1": result.to_dict().get("pass@1", result.accuracy)}

    def checkpoint_meta(self) -> dict:
        return post_meta(self.model, self.cfg, self.run.base, "rl")

    def cursor(self) -> dict:
        return {}  # the step fixes the problems and the sampling seeds

    def restore_cursor(self, cursor: dict) -> None:
        pass

    def close(self) -> None:
        pass


def rl(cfg: RLConfig, explicit: set[str] | None = None) -> dict:
    """Returns the loop state, the last evaluations, "rewards" (mean reward per step run), "checkpoint", "stopped_by"."""
    if cfg.task not in TASKS:
        raise PicochatError(f"--task {cfg.task!r} is not known; the RL tasks are {', '.join(TASKS)}")
    run = start_post_run(cfg, explicit, RL_POSITIVE, RL_NON_NEGATIVE)
    cfg = run.cfg = dataclasses.replace(run.cfg, run=run.cfg.run_name(), device=run.runtime.device.type,
                                        dtype=dtype_name(run.runtime.dtype))
    if cfg.problems_per_step % run.runtime.world_size:
        raise PicochatError(f"--problems-per-step {cfg.problems_per_step} does not split over {run.runtime.world_size} "
                            f"processes; use a multiple of {run.runtime.world_size}")
    problems = load_problems(cfg.task, cfg.data_dir, cfg.seed)
    random.Random(cfg.seed).shuffle(problems)
    held_out, problems = problems[:cfg.eval_problems], problems[cfg.eval_problems:]
    problems = problems[:cfg.max_problems] if cfg.max_problems else problems
    record_run(cfg, run.run_dir, run.runtime, "rl")
    optimizer = post_optimizer(run.base, run.runtime, cfg.lr_scale)
    plan = LoopPlan.of(cfg, run.run_dir, warmup_steps=0, warmdown_ratio=1.0, final_lr_frac=0.0, compile=False,
                       log_every=1)  # linear decay to 0
    stage = RL(run, problems, held_out)
    session = run_stage(stage, plan, run.runtime, run.base.model, optimizer, run.resume_from, cfg.dtype)
    return {**dataclasses.asdict(session.state), **session.results, "rewards": stage.mean_rewards,
            "checkpoint": session.last_checkpoint, "stopped_by": session.stopped_by}
