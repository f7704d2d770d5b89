"""The post-training stages' configs: one dataclass per stage, its CLI flags generated one to one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from picochat.config import field_help


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
    chat_eval: bool = field(default=True, metadata=field_help("run the chat evals (ChatCORE) at the end"))
    chat_eval_every: int = field(default=0, metadata=field_help("also every N steps (0: at the end only)"))
    chat_eval_max_problems: int = field(default=200, metadata=field_help("problems per chat eval task"))
    save_every: int = field(default=0, metadata=field_help("checkpoint every N steps (0: at the end only)"))
    log_every: int = field(default=10, metadata=field_help("console progress line every N steps"))
    resume: bool = field(default=False, metadata=field_help("continue the run (--run) from its latest checkpoint"))
    force: bool = field(default=False, metadata=field_help("start over a run that has checkpoints, deleting them"))
    wandb: bool = field(default=False, metadata=field_help("also log to wandb (when installed)"))
    device: str | None = field(default=None, metadata=field_help("cuda, mps or cpu; derived: autodetect"))
    dtype: str | None = field(default=None, metadata=field_help("compute dtype; derived: the runtime's",
                                                           choices=["float32", "bfloat16", "float16"]))
    compile: bool | None = field(default=None, metadata=field_help("torch.compile the model; derived: on for CUDA"))
    seed: int = field(default=42, metadata=field_help("random seed (mixture order, generated data)"))

    def run_name(self) -> str:
        return self.run or f"{Path(str(self.from_run)).name}-sft"


SFT_POSITIVE = ("num_iterations", "max_seq_len", "device_batch_size", "total_batch_size", "chat_eval_max_problems")
SFT_NON_NEGATIVE = ("lr_scale", "warmdown_ratio", "val_conversations", "eval_every", "chat_eval_every", "save_every",
                    "log_every")
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
    problems_per_step: int = field(default=16, metadata=field_help("problems sampled per step, over all ranks"))
    max_problems: int | None = field(default=None, metadata=field_help("cycle through only the first N (shuffled) problems"))
    samples_per_problem: int = field(default=16, metadata=field_help("completions per problem (k of pass@k)"))
    max_new_tokens: int = field(default=256, metadata=field_help("tokens per completion at most"))
    temperature: float = field(default=1.0, metadata=field_help("sampling temperature"))
    top_k: int = field(default=50, metadata=field_help("sample among the k most likely tokens"))
    device_batch_size: int = field(default=8, metadata=field_help("completions per forward/backward micro-batch"))
    lr_scale: float = field(default=0.05, metadata=field_help("the base run's learning rates times this, decaying to 0"))
    eval_every: int = field(default=60, metadata=field_help("held-out pass@k every N steps and at the end (0: at the end)"))
    eval_problems: int = field(default=0, metadata=field_help("problems held out of training for pass@k (0: none)"))
    save_every: int = field(default=60, metadata=field_help("checkpoint every N steps (and at the end)"))
    resume: bool = field(default=False, metadata=field_help("continue the run (--run) from its latest checkpoint"))
    force: bool = field(default=False, metadata=field_help("start over a run that has checkpoints, deleting them"))
    wandb: bool = field(default=False, metadata=field_help("also log to wandb (when installed)"))
    device: str | None = field(default=None, metadata=field_help("cuda, mps or cpu; derived: autodetect"))
    dtype: str | None = field(default=None, metadata=field_help("compute dtype; derived: the runtime's",
                                                           choices=["float32", "bfloat16", "float16"]))
    seed: int = field(default=42, metadata=field_help("random seed (problem order, sampling)"))

    def run_name(self) -> str:
        return self.run or f"{Path(str(self.from_run)).name}-rl"


RL_POSITIVE = ("num_iterations", "problems_per_step", "max_problems", "samples_per_problem", "max_new_tokens",
            "device_batch_size")
RL_NON_NEGATIVE = ("temperature", "top_k", "lr_scale", "eval_every", "eval_problems", "save_every")
