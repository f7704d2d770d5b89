"""The speedrun presets: every choice that differs between a laptop and an 8xH100 node, in one record.

The pretraining sizes not named here (width, batch, LRs, horizon) come from the scaling-law plan
(`picochat plan --depth N`), except for the cpu preset, whose batch is far below the plan's and
whose learning rates are therefore set by hand (see CPU_LEARNING_RATES).
"""
from __future__ import annotations

from dataclasses import dataclass

from picochat.errors import PicochatError

REFERENCE_DATASET = "climbmix"  # nanochat's pretraining data since 2026-03 (nanochat dev/LOG.md 2026-03-04: the dataset swap cut the speedrun by 27%)
# nanochat's speedrun.sh: ~170 climbmix shards feed d24 at tokens:params 8 (~5.8B tokens), so a shard
# holds ~35M tokens; d12 at the plan's 10.5 needs ~1.2B tokens: 40 shards leaves a margin.
D12_SHARDS = 40
GPT2_SHARDS = 170

# At 2,048 tokens per step the plan's sqrt(B / 2^19) scaling would put Muon at 0.00125, which learns too
# slowly for a 200-step run (~400k tokens, ~1e13 FLOPs: minutes on 2 cores); these are the plan's d4 rates at B = 2^17 (`picochat plan --depth 4
# --head-dim 64 --max-seq-len 256 --vocab-size 4096 --total-batch-size 131072`), checked to bring the
# loss down steadily on pystdlib (benchmarks/RESULTS.md).
CPU_LEARNING_RATES = ("--matrix-lr", "0.01", "--embedding-lr", "0.26", "--value-embedding-lr", "0.13",
                      "--lm-head-lr", "0.007", "--resid-lambda-lr", "0.0025", "--x0-lambda-lr", "0.25")


class UnknownPresetError(PicochatError):
    """--preset names no preset."""


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    depth: int
    shards: int  # reference-dataset training shards to download
    offline_fallback: bool  # without network, fall back to the built-in pystdlib corpus
    vocab_size: int
    tokenizer_max_chars: int
    gpus: int  # 0: one process (CPU); N: torchrun --nproc_per_node=N
    train_args: tuple[str, ...] = ()  # extra `picochat train` flags
    bpb_tokens: int = 2**20
    core_max_per_task: int | None = None  # None: every item
    sft_args: tuple[str, ...] = ()
    sft_generated_counts: tuple[int, int, int] = (20_000, 10_000, 20_000)  # spelling, letter-count, arithmetic
    chat_eval_max_problems: int | None = None
    sample_max_tokens: int = 128


PRESETS = {
    "cpu": Preset(
        name="cpu",
        summary="d4 on a 2-core CPU in about 5 minutes (CORE adds a few), offline (pystdlib) when there is no network",
        depth=4, shards=1, offline_fallback=True, vocab_size=4096, tokenizer_max_chars=5_000_000, gpus=0,
        train_args=("--head-dim", "64", "--window-pattern", "L", "--max-seq-len", "256",
                    "--device-batch-size", "8", "--total-batch-size", "2048", "--num-iterations", "200",
                    "--warmup-steps", "10", "--eval-every", "50", "--eval-tokens", "16384",
                    "--sample-every", "0", "--save-every", "50", "--log-every", "10", *CPU_LEARNING_RATES),
        bpb_tokens=65_536, core_max_per_task=10,
        sft_args=("--num-iterations", "100", "--val-conversations", "100", "--eval-every", "0",
                  "--log-every", "10"),
        sft_generated_counts=(3000, 1500, 3000), chat_eval_max_problems=50, sample_max_tokens=48),
    "d12": Preset(
        name="d12", summary="the quick-experiment scale: d12 from the plan, about 5 minutes on 8 H100s",
        depth=12, shards=D12_SHARDS, offline_fallback=False, vocab_size=32768, tokenizer_max_chars=2_000_000_000,
        gpus=8, train_args=("--save-every", "500"), core_max_per_task=500, chat_eval_max_problems=500),
    "gpt2": Preset(
        name="gpt2", summary="the GPT-2-grade recipe: d24, tokens:params 8, fp8, device batch 16, on 8 H100s",
        depth=24, shards=GPT2_SHARDS, offline_fallback=False, vocab_size=32768,
        tokenizer_max_chars=2_000_000_000, gpus=8,
        train_args=("--ratio", "8", "--fp8", "--device-batch-size", "16", "--save-every", "1000")),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        listed = "; ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())
        raise UnknownPresetError(f"--preset {name!r} is not a preset; the presets are {listed}")
    return PRESETS[name]
