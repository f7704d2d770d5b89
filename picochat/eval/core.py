"""The CORE metric (DCLM, arXiv 2406.11794): accuracy per task, centered by its random
baseline, averaged over the tasks present. Items are split across ranks (item i to rank
i % world) and the correct counts summed, so every rank returns the same result.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from picochat.eval.core_data import (CoreBundle, CoreDataError, TaskSpec, load_bundle, load_items, select_tasks,
                                     shuffled_and_capped)
from picochat.eval.core_prompts import prepare_item
from picochat.eval.core_score import count_correct
from picochat.runtime import print0

DEFAULT_BATCH_TOKENS = 8192  # rows x padded width per forward: 1 GiB of fp32 logits at vocab 32768


def centered_score(accuracy: float, random_baseline: float) -> float:
    """0 at chance, 1 at perfect (DCLM's centered accuracy): (acc - b) / (1 - b)."""
    return (accuracy - random_baseline) / (1.0 - random_baseline)


@dataclass(frozen=True)
class TaskResult:
    label: str
    task_type: str
    accuracy: float
    centered: float
    random_baseline: float
    examples: int
    seconds: float


@dataclass
class CoreResult:
    tasks: list[TaskResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # tasks whose data file is absent: out of the mean

    @property
    def core(self) -> float:
        if not self.tasks:
            return float("nan")
        return sum(t.centered for t in self.tasks) / len(self.tasks)

    def to_dict(self) -> dict:
        return {"tasks": {t.label: {"accuracy": t.accuracy, "centered": t.centered, "examples": t.examples}
                          for t in self.tasks},
                "core": self.core, "missing": list(self.missing)}


def model_device(model) -> torch.device:
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return param.device if param is not None else torch.device("cpu")


def model_max_seq_len(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_seq_len", None) or getattr(model, "max_seq_len", None)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def evaluate_task(model, tokenizer, task: TaskSpec, items: list[dict], device, max_seq_len: int | None,
                  batch_tokens: int = DEFAULT_BATCH_TOKENS) -> float:
    """Accuracy of `model` on `items` (already shuffled and capped), the same on every rank."""
    rank, world = rank_and_world()
    mine = [prepare_item(items, i, task, tokenizer, max_seq_len) for i in range(rank, len(items), world)]
    counts = torch.tensor([count_correct(model, mine, tokenizer.bos_id, device, batch_tokens), len(mine)],
                          dtype=torch.long, device=device)
    if world > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    correct, total = counts.tolist()
    return correct / total if total else float("nan")


def load_present_tasks(bundle: CoreBundle, tasks: list[str] | None, max_per_task: int | None,
                       log: Callable[[str], None]) -> tuple[list[tuple[TaskSpec, list[dict]]], list[str]]:
    """The selected tasks whose data file is present, each with its items (checked, shuffled, capped), and
    the labels of those whose file is absent. Every file is read before any is scored, so a bad line in the
    last task fails in seconds, not after an hour of evaluation."""
    present, missing = [], []
    for task in select_tasks(bundle, tasks):
        path = bundle.data_path(task)
        if path.is_file():
            present.append((task, shuffled_and_capped(load_items(path, task.task_type), max_per_task)))
        else:
            log(f"core: {task.label:<34} missing ({path} not found; left out of the mean)")
            missing.append(task.label)
    if not present:
        raise CoreDataError(f"none of the selected CORE tasks has its data file under {bundle.root / 'eval_data'}; "
                            f"re-download the bundle with --download, or name tasks that are there with --tasks")
    return present, missing


def evaluate_core(model, tokenizer, bundle_dir: Path | str, max_per_task: int | None = None,
                  tasks: list[str] | None = None, device=None, max_seq_len: int | None = None,
                  batch_tokens: int = DEFAULT_BATCH_TOKENS, log: Callable[[str], None] = print0) -> CoreResult:
    """CORE of `model` on the bundle at `bundle_dir`; tasks whose data is absent are named in
    `missing` and left out of the mean. A progress line per task through `log`."""
    present, missing = load_present_tasks(load_bundle(bundle_dir), tasks, max_per_task, log)
    device = torch.device(device) if device is not None else model_device(model)
    max_seq_len = max_seq_len or model_max_seq_len(model)
    result = CoreResult(missing=missing)
    for task, items in present:
        started = time.perf_counter()
        accuracy = evaluate_task(model, tokenizer, task, items, device, max_seq_len, batch_tokens)
        seconds = time.perf_counter() - started
        task_result = TaskResult(task.label, task.task_type, accuracy, centered_score(accuracy, task.random_baseline),
                                 task.random_baseline, len(items), seconds)
        result.tasks.append(task_result)
        log(f"core: {task.label:<34} acc {accuracy:.4f}  centered {task_result.centered:+.4f}  "
            f"n={len(items)}  {seconds:.1f}s ({len(items) / max(seconds, 1e-9):.1f} ex/s)")
    return result


def format_core_table(result: CoreResult) -> str:
    lines = [f"{'task':<34} {'accuracy':>9} {'centered':>9} {'n':>6}"]
    lines += [f"{t.label:<34} {t.accuracy:>9.4f} {t.centered:>+9.4f} {t.examples:>6}" for t in result.tasks]
    lines.append(f"{'CORE':<34} {'':>9} {result.core:>+9.4f}")
    if result.missing:
        lines.append(f"missing (not in the mean): {', '.join(result.missing)}")
    return "\n".join(lines)


def write_core_results(result: CoreResult, directory: Path) -> tuple[Path, Path]:
    """core.csv (one row per task, then CORE) and core.json (everything) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = directory / "core.csv", directory / "core.json"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "task_type", "accuracy", "centered", "random_baseline", "examples", "seconds"])
        for t in result.tasks:
            writer.writerow([t.label, t.task_type, f"{t.accuracy:.6f}", f"{t.centered:.6f}",
                             t.random_baseline, t.examples, f"{t.seconds:.2f}"])
        writer.writerow(["CORE", "", "", f"{result.core:.6f}", "", "", ""])
    payload = result.to_dict() | {"task_details": [asdict(t) for t in result.tasks]}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    return csv_path, json_path
