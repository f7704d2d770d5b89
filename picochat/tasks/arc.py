"""AI2 ARC (ARC-V1-Feb2018): grade-school science questions with 3-5 choices, Easy and Challenge sets."""
from __future__ import annotations

from picochat.tasks.base import Task, TaskDataError, field, multiple_choice_item, read_jsonl

SPLIT_FILES = {"train": "Train", "dev": "Dev", "test": "Test"}


class MultipleChoiceTask(Task):
    kind = "categorical"
    chance = 0.25  # ChatCORE centers ARC and MMLU at 1/4 (nanochat's scripts/chat_eval.py)
    letters = ("A", "B", "C", "D", "E")

    def score(self, item: dict, completion_text: str) -> bool:
        return completion_text.strip() == item["answer"]


class ArcTask(MultipleChoiceTask):
    folder = "arc"
    splits = ("train", "dev", "test")

    def __init__(self, subset: str, data_dir=None):
        super().__init__(data_dir)
        self.subset = subset  # "Easy" or "Challenge"
        self.name = f"arc-{subset.lower()}"

    def _load(self, split: str) -> list[dict]:
        path = self.require(self.data_dir / f"ARC-{self.subset}-{SPLIT_FILES[split]}.jsonl")
        return [arc_item(row, path, number, with_answer=split == "train")
                for number, row in enumerate(read_jsonl(path), start=1)]


def arc_item(row: dict, path, number: int, with_answer: bool) -> dict:
    """Choices relabelled A, B, C, ... by position (a few ARC items label them 1, 2, 3, 4)."""
    question = field(row, "question", path, number)
    choices = field(question, "choices", path, number)
    labels = [choice["label"] for choice in choices]
    answer_key = field(row, "answerKey", path, number)
    if answer_key not in labels:
        raise TaskDataError(f"{path}, line {number}: answerKey {answer_key!r} is not among the labels {labels}")
    answer = "ABCDEFGHIJ"[labels.index(answer_key)]
    return multiple_choice_item(field(question, "stem", path, number), [c["text"] for c in choices], answer,
                                with_answer, id=row.get("id"))
