"""`picochat eval chat`: a run's accuracy on the chat tasks, ChatCORE, and chat_eval.json in the run dir."""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from picochat.checkpoint import CHECKPOINTS, load_model_from_run, resolve_checkpoint
from picochat.config import add_config_args, config_from_args, field_help
from picochat.errors import PicochatError
from picochat.eval.chat import ChatResult, chatcore, evaluate_task
from picochat.runtime import init_runtime, print0, shutdown_runtime
from picochat.tasks import TASK_NAMES, Task, get_task
from picochat.tasks.download import ensure_task_data

RESULTS_FILE = "chat_eval.json"
SHUFFLE_SEED = 1337  # --max-problems takes a fixed random subset, not the first (MMLU is sorted by subject)



@dataclass
class ChatEvalConfig:
    run: str = field(default="", metadata=field_help("run name under $PICOCHAT_HOME/runs (or a run/checkpoint path)"))
    step: int | None = field(default=None, metadata=field_help("checkpoint step; derived: the latest"))
    task: str = field(default="all", metadata=field_help(f"one of {', '.join(TASK_NAMES)}, or all"))
    max_problems: int | None = field(default=None, metadata=field_help("items per task (a fixed random subset); "
                                                                   "derived: all"))
    num_samples: int = field(default=1, metadata=field_help("samples per generative item; the score is pass@k"))
    temperature: float = field(default=0.0, metadata=field_help("sampling temperature of generative tasks (0 = greedy)"))
    top_k: int | None = field(default=50, metadata=field_help("sample among the k likeliest tokens"))
    max_tokens: int = field(default=512, metadata=field_help("reply length limit of generative tasks"))
    batch_size: int = field(default=8, metadata=field_help("prompts per forward of categorical tasks"))
    data_dir: str | None = field(default=None, metadata=field_help("folder holding arc/, mmlu/, gsm8k/, humaneval/; "
                                                               "derived: $PICOCHAT_HOME/tasks"))
    download: bool = field(default=False, metadata=field_help("fetch the tasks' public data if absent"))
    device: str | None = field(default=None, metadata=field_help("cuda, mps or cpu; derived: autodetect"))
    json: bool = field(default=False, metadata=field_help("print one JSON object (tasks, chatcore)"))


def register_chat(stages) -> None:
    parser = stages.add_parser("chat", help="chat task accuracy (ARC, MMLU, GSM8K, HumanEval, spelling), ChatCORE",
                               description="Categorical tasks compare the logits over the answer letters; "
                                           "generative ones sample (calculator on) and check. Results merge into "
                                           f"{RESULTS_FILE} in the run directory.")
    add_config_args(parser, ChatEvalConfig)
    parser.set_defaults(func=run_chat)


def selected_tasks(cfg: ChatEvalConfig) -> list[Task]:
    names = TASK_NAMES if cfg.task == "all" else [cfg.task]
    return [get_task(name, cfg.data_dir) for name in names]


def check_config(cfg: ChatEvalConfig) -> None:
    if not cfg.run:
        raise PicochatError("--run is required: the name of a run under $PICOCHAT_HOME/runs (see `picochat train`)")
    if cfg.num_samples < 1 or cfg.max_tokens < 1 or cfg.batch_size < 1:
        raise PicochatError("--num-samples, --max-tokens and --batch-size must be at least 1")
    if cfg.num_samples > 1 and cfg.temperature == 0:
        raise PicochatError(f"--num-samples {cfg.num_samples} with --temperature 0 gives identical samples; "
                            f"set a temperature (e.g. 1.0) for pass@k")


def download_data(tasks: list[Task]) -> None:
    """Rank 0 fetches each task folder once; the others wait."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        for folder, root in {(t.folder, t.data_root) for t in tasks if t.folder}:
            ensure_task_data(folder, root)
    if dist.is_initialized():
        dist.barrier()


def task_items(task: Task, max_problems: int | None) -> list[dict]:
    items = task.load()
    if max_problems is not None and max_problems < len(items):
        random.Random(SHUFFLE_SEED).shuffle(items)
        items = items[:max_problems]
    return items


def run_directory(run: str, step: int | None) -> Path:
    checkpoint = resolve_checkpoint(run, step)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint


def write_results(results: list[ChatResult], run_dir: Path, step: int | None) -> Path:
    """Merge this invocation's tasks into chat_eval.json; ChatCORE there covers every task the file holds."""
    path = run_dir / RESULTS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    tasks = saved.get("tasks", {})
    tasks.update({r.task: {**r.to_dict(), "step": step} for r in results})
    centered = [t["centered"] for t in tasks.values()]
    payload = {"tasks": tasks, "chatcore": sum(centered) / len(centered), "chatcore_tasks": sorted(tasks)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def format_results(results: list[ChatResult]) -> str:
    lines = [f"{'task':<14} {'accuracy':>9} {'centered':>9} {'items':>7}"]
    lines += [f"{r.task:<14} {r.accuracy:>9.4f} {r.centered:>9.4f} {r.total:>7}"
              + (f"  ({r.too_long} prompts too long for the context)" if r.too_long else "") for r in results]
    lines.append(f"ChatCORE over {len(results)} task(s): {chatcore(results):.4f}")
    return "\n".join(lines)


def run_chat(args: argparse.Namespace) -> int:
    cfg = config_from_args(ChatEvalConfig, args)
    check_config(cfg)
    tasks = selected_tasks(cfg)  # an unknown task fails before anything loads
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if cfg.json else print0
    runtime = init_runtime(cfg.device)
    try:
        if cfg.download:
            download_data(tasks)
        items = {task.name: task_items(task, cfg.max_problems) for task in tasks}  # missing data fails here
        model, tokenizer, meta = load_model_from_run(cfg.run, runtime, cfg.step)
        results = []
        for task in tasks:
            log(f"{task.name}: {len(items[task.name])} items ({task.kind})")
            results.append(evaluate_task(model, tokenizer, task, items[task.name], cfg.batch_size, cfg.num_samples,
                                         cfg.max_tokens, cfg.temperature, cfg.top_k, log=log))
    finally:
        shutdown_runtime()
    if runtime.is_master:
        path = write_results(results, run_directory(cfg.run, cfg.step), meta.get("step"))
        summary = {"tasks": {r.task: r.to_dict() for r in results}, "chatcore": chatcore(results)}
        print(json.dumps(summary) if cfg.json else f"{format_results(results)}\nwrote {path}", flush=True)
    return 0
