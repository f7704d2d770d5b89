"""MMLU (hendrycks/test, Sept-2020 release): 57 subjects, four choices each; `train` is auxiliary_train."""
from __future__ import annotations

import csv
from pathlib import Path

from picochat.tasks.arc import MultipleChoiceTask
from picochat.tasks.base import TaskDataError, multiple_choice_item

SPLIT_FOLDERS = {"train": "auxiliary_train", "dev": "dev", "val": "val", "test": "test"}


class MmluTask(MultipleChoiceTask):
    name = "mmlu"
    folder = "mmlu"
    splits = ("train", "dev", "val", "test")
    letters = ("A", "B", "C", "D")

    def _load(self, split: str) -> list[dict]:
        folder = self.require(self.data_dir / SPLIT_FOLDERS[split])
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise TaskDataError(f"{self.name}: {folder} holds no .csv files; download the data again")
        return [item for path in files for item in read_mmlu_csv(path, split)]


def subject_of(path: Path, split: str) -> str:
    return path.stem.removesuffix(f"_{split}")


def read_mmlu_csv(path: Path, split: str) -> list[dict]:
    """Rows without header: question, A, B, C, D, answer letter."""
    items = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            line = f"{path}, line {reader.line_num}"
            if len(row) != 6:
                raise TaskDataError(f"{line}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
            question, *choices, answer = row
            if answer not in "ABCD" or len(answer) != 1:
                raise TaskDataError(f"{line}: the answer {answer!r} is not one of A, B, C, D")
            items.append(multiple_choice_item(question, choices, answer, with_answer=split == "train",
                                              subject=subject_of(path, split)))
    return items
