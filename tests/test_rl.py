"""RL: group advantages, the sampled-token mask, the policy-gradient loss, and a run whose reward rises."""
from __future__ import annotations

import json

import pytest
import torch

from picochat.infer.engine import Engine, SamplingParams
from picochat.model.config import GPTConfig
from picochat.model.gpt import GPT
from picochat.post.packing import IGNORE
from picochat.post.config import RLConfig, SFTConfig
from picochat.post.policy_gradient import advantages, collate, pg_examples, policy_gradient_loss, sampled_mask
from picochat.post.rl import refresh, rl, rollout_model
from picochat.post.sft import sft
from picochat.train.metrics import read_metrics
from infer_helpers import tiny_tokenizer
from post_helpers import base_home, losses, run_killed_at  # noqa: F401  (base_home: a module-scoped fixture)

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


@pytest.fixture(scope="module")
def add_sft(base_home, tmp_path_factory):
    """Run `add-sft`: the base briefly finetuned on additions, so RL has some reward to start from."""
    torch.set_num_threads(2)
    mixture = tmp_path_factory.mktemp("mixture") / "add.yaml"
    mixture.write_text("name: add\nsources:\n  - {source: arithmetic, args: {count: 3000, ops: '+'}}\n")
    sft(SFTConfig(from_run="base", run="add-sft", mixture=str(mixture), num_iterations=40, max_seq_len=48,
                  device_batch_size=8, total_batch_size=384, lr_scale=1.0, eval_every=0, val_conversations=0,
                  chat_eval=False, device="cpu", seed=1))
    return "add-sft"


@pytest.mark.slow
def test_rl_on_arithmetic_raises_mean_reward(base_home, add_sft):
    # The same 12 problems every step, so a step's mean reward moves with the policy, not with the draw.
    result = rl(RLConfig(from_run="add-sft", run="add-rl", task="arithmetic", num_iterations=8, problems_per_step=12,
                         max_problems=12, samples_per_problem=8, max_new_tokens=24, lr_scale=0.5,
                         device_batch_size=16, save_every=0, device="cpu", seed=0))
    rewards = result["rewards"]
    assert 0.0 < rewards[0] < 0.5, rewards  # briefly finetuned: some reward, room to grow
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.03, rewards
    records = [json.loads(line) for line in (base_home / "runs" / "add-rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9)) and "pass@8" in records[0]


def short_rl_args(run: str) -> list[str]:
    return ["rl", "--from", "add-sft", "--run", run, "--task", "arithmetic", "--num-iterations", "4",
            "--problems-per-step", "4", "--samples-per-problem", "8", "--max-new-tokens", "24", "--lr-scale", "0.5",
            "--device-batch-size", "16", "--save-every", "2", "--eval-problems", "4", "--eval-every", "2",
            "--device", "cpu", "--dtype", "float32", "--seed", "0"]


@pytest.mark.slow
def test_rl_killed_mid_run_resumes_to_the_same_losses(base_home, add_sft):
    from picochat.cli import main
    assert main(short_rl_args("rl-whole")) == 0
    whole = losses(base_home, "rl-whole")
    assert any(loss != 0.0 for loss in whole), whole  # some advantage to learn from, or the check is empty
    killed = run_killed_at(3, base_home, short_rl_args("rl-killed"))
    assert killed.returncode == -9 and len(losses(base_home, "rl-killed")) == 2, killed.stderr[-2000:]
    assert main(["rl", "--run", "rl-killed", "--resume"]) == 0
    assert losses(base_home, "rl-killed") == whole
    records = read_metrics(base_home / "runs" / "rl-whole" / "metrics.jsonl")
    assert [r["step"] for r in records if "heldout_pass@k" in r] == [2, 4]
    assert all(r["flops"] > 0 and r["mfu"] > 0 for r in records)  # sampling and training FLOPs counted


def test_rollouts_in_bf16_decode_a_copy_that_samples_what_the_training_model_would():
    """The copy holds bf16 matrices; after a training step, a refresh makes it sample the new weights' tokens."""
    tok = tiny_tokenizer()
    model = GPT(GPTConfig(depth=2, vocab_size=tok.vocab_size, aspect_ratio=32, head_dim=16, max_seq_len=64),
                torch.bfloat16)
    model.init_weights()
    policy = rollout_model(model)
    assert policy is not model and policy.lm_head.weight.dtype == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.float32 and model.lm_head.weight.requires_grad
    prompt, params = [tok.bos_id, *tok.encode("What is 3 + 4?")], SamplingParams(max_tokens=12, seed=3, num_samples=3)
    with torch.no_grad():
        for p in model.parameters():  # a training step's worth of change, everywhere
            p.add_(torch.randn_like(p) * 0.05)
    refresh(policy, model)
    trained, rolled_out = Engine(model, tok), Engine(policy, tok)
    for engine in (trained, rolled_out):
        engine.stop_ids = set()  # every row writes all 12 tokens
    assert list(rolled_out.generate(prompt, params)) == list(trained.generate(prompt, params))
    fp32 = GPT(model.config)
    assert rollout_model(fp32) is fp32  # in fp32 the cast is free: the rollouts decode the training model
