"""The CORE bundle on disk: the task list, the random baselines, the items of each task.

Layout (the DCLM eval bundle, as published for nanochat):
  core.yaml               icl_tasks: label, dataset_uri, num_fewshot, icl_task_type, continuation_delimiter
  eval_meta_data.csv      "Eval Task", "Random baseline" (percent)
  eval_data/<category>/<task>.jsonl
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from picochat.errors import PicochatError
from picochat.runtime import picochat_home

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
# the fields each task type's items must carry (llm-foundry's jsonl formats)
REQUIRED_FIELDS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}
SHUFFLE_SEED = 1337  # nanochat shuffles each task with this seed before any per-task cap


class CoreDataError(PicochatError):
    """The CORE bundle, or one of its files, is missing or malformed."""


@dataclass(frozen=True)
class TaskSpec:
    label: str
    dataset_uri: str
    task_type: str
    num_fewshot: int
    continuation_delimiter: str
    random_baseline: float  # a fraction (the csv holds percent)


@dataclass(frozen=True)
class CoreBundle:
    root: Path
    tasks: list[TaskSpec]

    def data_path(self, task: TaskSpec) -> Path:
        return self.root / "eval_data" / task.dataset_uri

    def labels(self) -> list[str]:
        return [t.label for t in self.tasks]


def default_bundle_dir() -> Path:
    return picochat_home() / "eval_bundle"


def missing_bundle_message(root: Path) -> str:
    return (f"no CORE bundle at {root} (it has no core.yaml); fetch the published one with "
            f"`picochat eval core --download ...` (unpacks into {default_bundle_dir()}) "
            f"or point at an unpacked bundle with --bundle DIR")


def load_bundle(root: Path | str) -> CoreBundle:
    root = Path(root)
    config_path = root / "core.yaml"
    if not config_path.is_file():
        raise CoreDataError(missing_bundle_message(root))
    baselines = load_random_baselines(root / "eval_meta_data.csv")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as e:
        raise CoreDataError(f"{config_path} is not valid YAML: {e}") from e
    entries = (config or {}).get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CoreDataError(f"{config_path} has no `icl_tasks` list; it should list the CORE tasks")
    tasks = [parse_task(entry, i, config_path, baselines) for i, entry in enumerate(entries)]
    return CoreBundle(root=root, tasks=tasks)


def parse_task(entry: dict, index: int, config_path: Path, baselines: dict[str, float]) -> TaskSpec:
    where = f"{config_path}, icl_tasks[{index}]"
    if not isinstance(entry, dict) or not all(k in entry for k in ("label", "dataset_uri", "icl_task_type")):
        raise CoreDataError(f"{where} needs label, dataset_uri and icl_task_type; got {entry!r}")
    label, task_type = entry["label"], entry["icl_task_type"]
    if task_type not in TASK_TYPES:
        raise CoreDataError(f"{where} ({label}): icl_task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
    if label not in baselines:
        raise CoreDataError(f"{where}: task {label!r} has no row in eval_meta_data.csv, so it has no random baseline")
    shots = entry.get("num_fewshot", [0])
    shots = shots[0] if isinstance(shots, list) else shots
    return TaskSpec(label=label, dataset_uri=entry["dataset_uri"], task_type=task_type, num_fewshot=int(shots),
                    continuation_delimiter=entry.get("continuation_delimiter", " "),
                    random_baseline=baselines[label])


def load_random_baselines(path: Path) -> dict[str, float]:
    """label -> random-guess accuracy as a fraction (the file stores percent)."""
    if not path.is_file():
        raise CoreDataError(f"{path} is missing; the CORE bundle needs it for each task's random baseline")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "Eval Task" not in rows[0] or "Random baseline" not in rows[0]:
        raise CoreDataError(f"{path} needs the columns 'Eval Task' and 'Random baseline'")
    baselines = {}
    for line_no, row in enumerate(rows, start=2):
        try:
            baselines[row["Eval Task"]] = float(row["Random baseline"]) / 100
        except (TypeError, ValueError) as e:
            raise CoreDataError(f"{path}:{line_no}: random baseline {row['Random baseline']!r} is not a number") from e
    return baselines


def select_tasks(bundle: CoreBundle, names: list[str] | None) -> list[TaskSpec]:
    if not names:
        return list(bundle.tasks)
    known = bundle.labels()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CoreDataError(f"unknown CORE task(s) {', '.join(unknown)} in --tasks; "
                            f"the bundle at {bundle.root} has: {', '.join(known)}")
    return [t for t in bundle.tasks if t.label in names]


def load_items(path: Path, task_type: str) -> list[dict]:
    """Every item of one task's jsonl, each checked for the fields its task type needs."""
    required = REQUIRED_FIELDS[task_type]
    items = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise CoreDataError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno}); "
                                    f"fix or delete that line, or re-download the bundle") from e
            lacking = [k for k in required if not isinstance(item, dict) or k not in item]
            if lacking:
                raise CoreDataError(f"{path}:{line_no}: a {task_type} item needs {', '.join(required)}; "
                                    f"missing {', '.join(lacking)}")
            items.append(item)
    return items


def shuffled_and_capped(items: list[dict], max_per_task: int | None) -> list[dict]:
    """nanochat's order: shuffle with a fixed seed, then keep the first `max_per_task`."""
    items = list(items)
    random.Random(SHUFFLE_SEED).shuffle(items)
    return items if max_per_task is None or max_per_task <= 0 else items[:max_per_task]
