"""The speedrun's stages, in order: what each one runs and which files prove it has run.

Each stage is a list of `picochat` command lines (`Command`) plus the files it leaves
(`outputs`). The runner (runner.py) skips a stage whose outputs exist, so reading this file
tells you the whole pipeline; `picochat speedrun --dry-run` prints the same commands.
"""
from __future__ import annotations

import json
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from picochat.checkpoint import latest_checkpoint, read_meta, run_dir
from picochat.data.download import SOURCES
from picochat.data.pystdlib import PYSTDLIB
from picochat.data.shards import MANIFEST_NAME
from picochat.errors import PicochatError
from picochat.eval.core_data import default_bundle_dir
from picochat.runtime import datasets_dir, tokenizers_dir
from picochat.speedrun.presets import REFERENCE_DATASET, Preset
from picochat.tasks import TASK_NAMES, get_task

SAMPLE_PROMPTS = ("Hello! Who are you?", "Spell the word 'banana' letter by letter.", "What is 12 + 7?")
NETWORK_CHECK_SECONDS = 3.0


@dataclass(frozen=True)
class Command:
    """One `picochat ...` invocation; `distributed` ones run under torchrun on GPU presets."""
    args: tuple[str, ...]
    distributed: bool = False

    def display(self) -> str:
        return "picochat " + " ".join(quote(a) for a in self.args)


def quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w.,:/=+-]+", arg) else json.dumps(arg)


@dataclass
class Context:
    """Everything a stage needs to build its commands: the preset and the choices resolved at start."""
    preset: Preset
    run: str
    dataset: str
    nproc: int = 1
    device: str | None = None
    core_bundle: Path = field(default_factory=default_bundle_dir)
    data_dir: Path | None = None  # chat-task data: gsm8k/, arc/, mmlu/, humaneval/

    @property
    def run_dir(self) -> Path:
        return run_dir(self.run)

    @property
    def sft_run(self) -> str:
        return f"{self.run}-sft"

    @property
    def sft_dir(self) -> Path:
        return run_dir(self.sft_run)

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "speedrun"

    @property
    def tokenizer(self) -> str:
        return f"{self.dataset}-{self.preset.vocab_size}"

    def device_args(self) -> tuple[str, ...]:
        return ("--device", self.device) if self.device else ()


@dataclass(frozen=True)
class Stage:
    name: str
    commands: Callable[[Context], list[Command]]  # [] = nothing to do here (the reason is printed)
    outputs: Callable[[Context], list[Path]]  # [] or a missing file: not done
    finish: Callable[[Context, list[str]], None] | None = None  # each command's output -> the stage's files
    # done when its outputs exist, whoever made them (a dataset, a tokenizer, a finished pretraining run
    # launched by hand, e.g. multi-node); other stages also need this speedrun's record that they ran
    outputs_suffice: bool = False
    skip_reason: Callable[[Context], str] | None = None


# ---- choosing the data ---------------------------------------------------------------------------

def network_reachable(url: str = SOURCES[REFERENCE_DATASET].url(0), timeout: float = NETWORK_CHECK_SECONDS) -> bool:
    """A bounded TCP connect to the reference dataset's host: no DNS or no route means offline."""
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def choose_dataset(preset: Preset, requested: str | None, probe: Callable[[], bool] = network_reachable) -> tuple[str, str]:
    """(dataset name, why): --dataset, else the reference corpus when reachable, else pystdlib on cpu."""
    if requested:
        return requested, f"dataset {requested!r} (--dataset)"
    if (datasets_dir() / REFERENCE_DATASET / MANIFEST_NAME).is_file():
        return REFERENCE_DATASET, f"the reference dataset {REFERENCE_DATASET!r}, already downloaded"
    if probe():
        return REFERENCE_DATASET, f"the reference dataset {REFERENCE_DATASET!r} ({preset.shards} shard(s) to download)"
    if preset.offline_fallback:
        return PYSTDLIB, (f"no network ({urllib.parse.urlsplit(SOURCES[REFERENCE_DATASET].url(0)).hostname} is not "
                          f"reachable): using the built-in {PYSTDLIB!r} corpus (or pass --dataset NAME)")
    raise PicochatError(f"preset {preset.name!r} trains on {REFERENCE_DATASET!r}, which is neither downloaded nor "
                        f"reachable; download it on a machine with network (`picochat data download --dataset "
                        f"{REFERENCE_DATASET} -n {preset.shards}`) and copy $PICOCHAT_HOME/datasets over")


def data_commands(ctx: Context) -> list[Command]:
    if ctx.dataset == PYSTDLIB:
        return [Command(("data", "import", "--builtin", PYSTDLIB))]
    if ctx.dataset == REFERENCE_DATASET:
        return [Command(("data", "download", "--dataset", REFERENCE_DATASET, "-n", str(ctx.preset.shards)))]
    raise PicochatError(f"--dataset {ctx.dataset!r}: no dataset at {datasets_dir() / ctx.dataset}; create it with "
                        f"`picochat data import PATH... --name {ctx.dataset}` first")


def dataset_outputs(ctx: Context) -> list[Path]:
    return [datasets_dir() / ctx.dataset / MANIFEST_NAME]


# ---- tokenizer -----------------------------------------------------------------------------------

def tokenizer_commands(ctx: Context) -> list[Command]:
    return [Command(("tokenizer", "train", "--dataset", ctx.dataset, "--vocab-size", str(ctx.preset.vocab_size),
                     "--max-chars", str(ctx.preset.tokenizer_max_chars), "--name", ctx.tokenizer))]


def tokenizer_eval_commands(ctx: Context) -> list[Command]:
    return [Command(("tokenizer", "eval", "--name", ctx.tokenizer, "--dataset", ctx.dataset, "--max-docs", "200"))]


# ---- pretraining and its evaluations ---------------------------------------------------------------

def training_finished(run: Path) -> bool:
    """The latest checkpoint is at the run's planned last step."""
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        return False
    meta = read_meta(checkpoint)
    return meta["loop_state"]["step"] >= meta["run_config"]["num_iterations"]


def pretrain_commands(ctx: Context) -> list[Command]:
    resume = ("--resume",) if latest_checkpoint(ctx.run_dir) is not None else ()  # an interrupted run continues
    args = ("train", "--dataset", ctx.dataset, "--tokenizer", ctx.tokenizer, "--run-name", ctx.run,
            "--depth", str(ctx.preset.depth), *ctx.preset.train_args, *ctx.device_args(), *resume)
    return [Command(args, distributed=True)]


def pretrain_outputs(ctx: Context) -> list[Path]:
    """The final checkpoint; nothing (not done) while the run is short of its last step."""
    return latest_checkpoint_outputs(ctx.run_dir) if training_finished(ctx.run_dir) else []


def bpb_commands(ctx: Context) -> list[Command]:
    return [Command(("eval", "bpb", "--run", ctx.run, "--tokens", str(ctx.preset.bpb_tokens), "--json",
                     *ctx.device_args()), distributed=True)]


def last_json_object(lines: list[str]) -> dict:
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise PicochatError("the command printed no JSON result; see its log")


def write_bpb(ctx: Context, outputs: list[str]) -> None:
    result = last_json_object(outputs[-1].splitlines())
    (ctx.run_dir / "bpb.json").write_text(json.dumps(result, indent=2) + "\n")


def core_commands(ctx: Context) -> list[Command]:
    """GPU presets fetch the bundle when absent; the cpu preset evaluates only a bundle already on disk."""
    online = not ctx.preset.offline_fallback
    if not online and not (ctx.core_bundle / "core.yaml").is_file():
        return []
    cap = () if ctx.preset.core_max_per_task is None else ("--max-per-task", str(ctx.preset.core_max_per_task))
    return [Command(("eval", "core", "--run", ctx.run, "--bundle", str(ctx.core_bundle), *cap,
                     *(("--download",) if online else ()), *ctx.device_args()), distributed=True)]


def core_skip_reason(ctx: Context) -> str:
    return (f"no CORE bundle at {ctx.core_bundle} (no core.yaml): CORE skipped; put the DCLM bundle there "
            f"(`picochat eval core --run {ctx.run} --download`) or pass --core-bundle DIR, then rerun")


# ---- finetuning and chat -------------------------------------------------------------------------

def has_local_sft_data(data_dir: Path | None) -> bool:
    return data_dir is not None and (data_dir / "gsm8k" / "train.jsonl").is_file() and (data_dir / "arc").is_dir()


def generated_mixture(ctx: Context) -> Path:
    """Only the sources made here (identity, spelling, letter counting, arithmetic): needs no files."""
    spelling, letters, arithmetic = ctx.preset.sft_generated_counts
    mixture = {"name": "generated", "sources": [
        {"source": "identity", "epochs": 2}, {"source": "spelling", "args": {"count": spelling}},
        {"source": "letter-count", "args": {"count": letters}}, {"source": "arithmetic", "args": {"count": arithmetic}}]}
    path = ctx.state_dir / "sft-mixture.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(mixture, sort_keys=False))
    return path


def sft_commands(ctx: Context) -> list[Command]:
    if not ctx.preset.offline_fallback:  # GPU nodes have network: the reference mixture (SmolTalk, MMLU, GSM8K, ...)
        mixture = ("--mixture", "default")
    elif has_local_sft_data(ctx.data_dir):
        mixture = ("--mixture", "offline", "--data-dir", str(ctx.data_dir))
    else:
        mixture = ("--mixture", str(generated_mixture(ctx)))
    args = ("sft", "--from-run", ctx.run, "--run", ctx.sft_run, *mixture, "--no-chat-eval",
            *ctx.preset.sft_args, *ctx.device_args())
    return [Command(args, distributed=True)]


def latest_checkpoint_outputs(run: Path) -> list[Path]:
    checkpoint = latest_checkpoint(run)
    return [checkpoint / "meta.json"] if checkpoint is not None else []


def present_chat_tasks(data_dir: Path | None) -> list[str]:
    """The generated tasks, and those whose data folder exists."""
    tasks = [get_task(name, data_dir) for name in TASK_NAMES]
    return [t.name for t in tasks if not t.folder or t.data_dir.is_dir()]


def chat_eval_commands(ctx: Context) -> list[Command]:
    cap = () if ctx.preset.chat_eval_max_problems is None else ("--max-problems", str(ctx.preset.chat_eval_max_problems))
    data = ("--data-dir", str(ctx.data_dir)) if ctx.data_dir else ()
    if not ctx.preset.offline_fallback:  # GPU presets: every task, downloading what is absent
        return [Command(("eval", "chat", "--run", ctx.sft_run, "--task", "all", "--download", *cap, *data,
                         *ctx.device_args()), distributed=True)]
    return [Command(("eval", "chat", "--run", ctx.sft_run, "--task", task, *cap, *data, *ctx.device_args()),
                    distributed=True) for task in present_chat_tasks(ctx.data_dir)]


def sample_commands(ctx: Context) -> list[Command]:
    return [Command(("chat", "--run", ctx.sft_run, "-p", prompt, "--temperature", "0",
                     "--max-tokens", str(ctx.preset.sample_max_tokens), *ctx.device_args()))
            for prompt in SAMPLE_PROMPTS]


def write_samples(ctx: Context, replies: list[str]) -> None:
    """samples.json in the SFT run: one "prompt -> reply" line per prompt, which the report card shows."""
    samples = [f"{prompt} -> {reply.strip()}" for prompt, reply in zip(SAMPLE_PROMPTS, replies)]
    (ctx.sft_dir / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")


def report_commands(ctx: Context) -> list[Command]:
    return [Command(("report", ctx.run)), Command(("report", ctx.sft_run))]


STAGES = (
    Stage("data", data_commands, dataset_outputs, outputs_suffice=True),
    Stage("tokenizer", tokenizer_commands, lambda ctx: [tokenizers_dir() / ctx.tokenizer / "meta.json"], outputs_suffice=True),
    Stage("tokenizer-eval", tokenizer_eval_commands, lambda ctx: [ctx.state_dir / "logs" / "tokenizer-eval.log"]),
    Stage("pretrain", pretrain_commands, pretrain_outputs, outputs_suffice=True),
    Stage("bpb", bpb_commands, lambda ctx: [ctx.run_dir / "bpb.json"], finish=write_bpb),
    Stage("core", core_commands, lambda ctx: [ctx.run_dir / "core.json"], skip_reason=core_skip_reason),
    Stage("sft", sft_commands, lambda ctx: latest_checkpoint_outputs(ctx.sft_dir)),
    Stage("chat-eval", chat_eval_commands, lambda ctx: [ctx.sft_dir / "chat_eval.json"]),
    Stage("samples", sample_commands, lambda ctx: [ctx.sft_dir / "samples.json"], finish=write_samples),
    Stage("report", report_commands,
          lambda ctx: [ctx.run_dir / "report" / "report.md", ctx.sft_dir / "report" / "report.md"]),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
