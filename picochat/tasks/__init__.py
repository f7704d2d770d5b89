"""Chat tasks: conversations to evaluate on (and train on), each with its scorer.

`get_task(name, data_dir)` builds one; `TASK_NAMES` lists them. See base.py for the interface.
"""
from __future__ import annotations

from pathlib import Path

from picochat.tasks.arc import ArcTask
from picochat.tasks.base import Task, TaskDataError, prompt_conversation, tasks_dir
from picochat.tasks.gsm8k import Gsm8kTask, gsm8k_conversation
from picochat.tasks.humaneval import HumanEvalTask
from picochat.tasks.mmlu import MmluTask
from picochat.tasks.spelling import SpellingTask

TASK_BUILDERS = {
    "arc-easy": lambda data_dir: ArcTask("Easy", data_dir),
    "arc-challenge": lambda data_dir: ArcTask("Challenge", data_dir),
    "mmlu": MmluTask,
    "gsm8k": Gsm8kTask,
    "humaneval": HumanEvalTask,
    "spelling": SpellingTask,
}
TASK_NAMES = tuple(TASK_BUILDERS)


def get_task(name: str, data_dir: str | Path | None = None) -> Task:
    if name not in TASK_BUILDERS:
        raise TaskDataError(f"unknown task {name!r}; the tasks are {', '.join(TASK_NAMES)}")
    return TASK_BUILDERS[name](data_dir)


__all__ = ["Task", "TaskDataError", "TASK_NAMES", "get_task", "gsm8k_conversation", "prompt_conversation",
           "tasks_dir"]
