"""RL: group advantages, the sampled-token mask, the policy-gradient loss, and a run whose reward rises."""
from __future__ import annotations

import json

import pytest
import torch

from picochat.post.packing import IGNORE
from picochat.post.config import RLConfig, SFTConfig
from picochat.post.policy_gradient import advantages, collate, pg_examples, policy_gradient_loss, sampled_mask
from picochat.post.rl import rl
from picochat.post.sft import sft
from post_helpers import base_home  # noqa: F401  (a module-scoped fixture)

OUT_START, OUT_END = 100, 101


def test_advantage_is_reward_minus_the_group_mean():
    assert advantages([1.0, 0.0, 0.0, 1.0]) == [0.5, -0.5, -0.5, 0.5]
    assert advantages([1.0, 1.0]) == [0.0, 0.0]  # nothing to learn from a group that agrees


def test_forced_tool_output_is_masked_and_the_stop_token_kept():
    completion = [5, 6, OUT_START, 7, 8, OUT_END, 9, 2]
    assert sampled_mask(completion, OUT_START, OUT_END) == [1, 1, 0, 0, 0, 0, 1, 1]
    [(inputs, targets, adv)] = pg_examples([0, 3, 4], [completion], [0.5], OUT_START, OUT_END)
    assert inputs == [0, 3, 4, 5, 6, OUT_START, 7, 8, OUT_END, 9] and adv == 0.5
    assert targets == [IGNORE, IGNORE, 5, 6, IGNORE, IGNORE, IGNORE, IGNORE, 9, 2]  # prompt and tool output out


def test_a_step_on_the_pg_loss_makes_good_samples_likelier_and_bad_ones_rarer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(8, 8), torch.nn.Linear(8, 8))

    def forward(inputs, targets, loss_reduction="none"):
        logits = model(inputs)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-1, reduction="none")

    examples = [([1, 2], [2, 3], 1.0), ([1, 2], [2, 4], -1.0)]
    batch = collate(examples, 0, "cpu")
    before = forward(batch[0], batch[1]).detach()
    policy_gradient_loss(forward, batch).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
    after = forward(batch[0], batch[1]).detach()
    assert after[0, 1] < before[0, 1] and after[1, 1] > before[1, 1]  # nats: lower = likelier


@pytest.mark.slow
def test_rl_on_arithmetic_raises_mean_reward(base_home, tmp_path):
    torch.set_num_threads(2)
    mixture = tmp_path / "add.yaml"
    mixture.write_text("name: add\nsources:\n  - {source: arithmetic, args: {count: 3000, ops: '+'}}\n")
    sft(SFTConfig(from_run="base", run="add-sft", mixture=str(mixture), num_iterations=40, max_seq_len=48,
                  device_batch_size=8, total_batch_size=384, lr_scale=1.0, eval_every=0, val_conversations=0,
                  chat_eval=False, device="cpu", seed=1))
    # The same 12 problems every step, so a step's mean reward moves with the policy, not with the draw.
    result = rl(RLConfig(from_run="add-sft", run="add-rl", task="arithmetic", num_iterations=8, problems_per_step=12,
                         max_problems=12, samples_per_problem=8, max_new_tokens=24, lr_scale=0.5,
                         device_batch_size=16, save_every=0, device="cpu", seed=0))
    rewards = result["rewards"]
    assert 0.0 < rewards[0] < 0.5, rewards  # briefly finetuned: some reward, room to grow
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.03, rewards
    records = [json.loads(line) for line in (base_home / "runs" / "add-rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9)) and "pass@8" in records[0]
