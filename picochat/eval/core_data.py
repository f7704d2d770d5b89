"""The CORE bundle on disk: the task list, the random baselines, the items of each task.

Layout (the DCLM eval bundle, as published for nanochat):
  core.yaml               icl_tasks: label, dataset_uri, num_fewshot, icl_task_type, continuation_delimiter
  eval_meta_data.csv      "Eval Task", "Random baseline" (percent)
  eval_data/<category>/<task>.jsonl
"""
from __future__ import annotations

import csv
import io
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
OPTIONS_FIELD = {"multiple_choice": "choices", "schema": "context_options"}  # what `gold` indexes
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
        config = yaml.safe_load(read_utf8(config_path))
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
    label, task_type, delimiter = entry["label"], entry["icl_task_type"], entry.get("continuation_delimiter", " ")
    if not all(isinstance(value, str) for value in (label, entry["dataset_uri"], delimiter)):
        raise CoreDataError(f"{where}: label, dataset_uri and continuation_delimiter must be strings; "
                            f"got {label!r}, {entry['dataset_uri']!r} and {delimiter!r}")
    if task_type not in TASK_TYPES:
        raise CoreDataError(f"{where} ({label}): icl_task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}")
    if label not in baselines:
        raise CoreDataError(f"{where}: task {label!r} has no row in eval_meta_data.csv, so it has no random baseline")
    return TaskSpec(label=label, dataset_uri=entry["dataset_uri"], task_type=task_type,
                    num_fewshot=parse_num_fewshot(entry.get("num_fewshot", [0]), f"{where} ({label})"),
                    continuation_delimiter=delimiter, random_baseline=baselines[label])


def parse_num_fewshot(value, where: str) -> int:
    """llm-foundry lists shot counts (`num_fewshot: [10]`); picochat evaluates the first."""
    shots = value[0] if isinstance(value, list) and value else value
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise CoreDataError(f"{where}: num_fewshot {value!r} is not a whole number of examples; "
                            f"write a count of 0 or more, e.g. `num_fewshot: [10]`")
    return shots


def load_random_baselines(path: Path) -> dict[str, float]:
    """label -> random-guess accuracy as a fraction (the file stores percent)."""
    if not path.is_file():
        raise CoreDataError(f"{path} is missing; the CORE bundle needs it for each task's random baseline")
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    if not reader.fieldnames or "Eval Task" not in reader.fieldnames or "Random baseline" not in reader.fieldnames:
        raise CoreDataError(f"{path} needs the columns 'Eval Task' and 'Random baseline'")
    baselines = {}
    for row in reader:
        where = f"{path}:{reader.line_num}"
        try:
            percent = float(row["Random baseline"])
        except (TypeError, ValueError) as e:
            raise CoreDataError(f"{where}: random baseline {row['Random baseline']!r} is not a number") from e
        if not 0 <= percent < 100:  # also refuses nan
            raise CoreDataError(f"{where}: random baseline {row['Random baseline']!r} of {row['Eval Task']!r} must be "
                                f"a percent from 0 up to (not including) 100, since CORE divides by 100 minus it")
        baselines[row["Eval Task"]] = percent / 100
    return baselines


def read_utf8(path: Path) -> str:
    """The text of a bundle file; bytes that are not UTF-8 are reported by line, not as a traceback."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CoreDataError(f"{path}:{line}: byte 0x{data[e.start]:02x} is not UTF-8; re-save the file as UTF-8 "
                            f"or re-download the bundle") from e


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
    """Every item of one task's jsonl (at least one), each checked for the fields its task type needs."""
    items = []
    for line_no, line in enumerate(read_utf8(path).split("\n"), start=1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise CoreDataError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno}); "
                                f"fix or delete that line, or re-download the bundle") from e
        problem = item_problem(item, task_type)
        if problem:
            raise CoreDataError(f"{path}:{line_no}: {problem}; fix or delete that line, or re-download the bundle")
        items.append(item)
    if not items:
        raise CoreDataError(f"{path} holds no items; re-download the bundle, or leave its task out with --tasks")
    return items


def item_problem(item, task_type: str) -> str | None:
    """What is wrong with one item for its task type, or None: every field present and of its type, and
    `gold` an index into the options (an index past them would mark every answer wrong without a word)."""
    required = REQUIRED_FIELDS[task_type]
    lacking = [k for k in required if not isinstance(item, dict) or k not in item]
    if lacking:
        return f"a {task_type} item needs {', '.join(required)}; missing {', '.join(lacking)}"
    options = OPTIONS_FIELD.get(task_type)
    for key in required:
        value = item[key]
        if key == options and not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            return f"`{key}` must be a non-empty list of strings; got {repr(value)[:60]}"
        if key not in (options, "gold") and not isinstance(value, str):
            return f"`{key}` must be a string; got {repr(value)[:60]}"
    if options:
        gold, count = item["gold"], len(item[options])
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < count:
            return f"`gold` {gold!r} is not an index into its {count} {options} (a whole number 0 to {count - 1})"
    return None


def shuffled_and_capped(items: list[dict], max_per_task: int | None) -> list[dict]:
    """nanochat's order: shuffle with a fixed seed, then keep the first `max_per_task`."""
    items = list(items)
    random.Random(SHUFFLE_SEED).shuffle(items)
    return items if max_per_task is None or max_per_task <= 0 else items[:max_per_task]
