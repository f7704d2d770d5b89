"""The eval stage's configs: one dataclass per subcommand, its CLI flags generated one to one."""
from __future__ import annotations

from dataclasses import dataclass, field

from picochat.config import field_help
from picochat.eval.core import DEFAULT_BATCH_TOKENS



@dataclass
class BpbEvalConfig:
    run: str = field(default="", metadata=field_help("run name under $PICOCHAT_HOME/runs (or a run/checkpoint path)"))
    step: int | None = field(default=None, metadata=field_help("checkpoint step; derived: the latest"))
    dataset: str | None = field(default=None, metadata=field_help("dataset to measure on, with the run's tokenizer; "
                                                               "derived: the run's (a post-trained run's base's)"))
    split: str = field(default="val", metadata=field_help("dataset split to measure", choices=["val", "train"]))
    tokens: int = field(default=2**20, metadata=field_help("token budget over all ranks"))
    batch_size: int | None = field(default=None, metadata=field_help("sequences per forward; derived: the run's"))
    device: str | None = field(default=None, metadata=field_help("cuda, mps or cpu; derived: autodetect"))
    json: bool = field(default=False, metadata=field_help("print one JSON object instead of a line"))


@dataclass
class CoreEvalConfig:
    run: str = field(default="", metadata=field_help("run name under $PICOCHAT_HOME/runs (or a run/checkpoint path)"))
    step: int | None = field(default=None, metadata=field_help("checkpoint step; derived: the latest"))
    bundle: str | None = field(default=None, metadata=field_help("CORE bundle dir; derived: $PICOCHAT_HOME/eval_bundle"))
    download: bool = field(default=False, metadata=field_help("fetch the published bundle if absent"))
    max_per_task: int | None = field(default=None, metadata=field_help("items per task after the shuffle; derived: all"))
    tasks: str | None = field(default=None, metadata=field_help("comma-separated task labels; derived: all in core.yaml"))
    batch_tokens: int = field(default=DEFAULT_BATCH_TOKENS, metadata=field_help("rows x padded length per forward"))
    device: str | None = field(default=None, metadata=field_help("cuda, mps or cpu; derived: autodetect"))
    json: bool = field(default=False, metadata=field_help("print one JSON object (tasks, core, missing)"))
