"""What every chat task shares: the Task interface, where its data lives, careful file readers.

A task item is a conversation (`{"messages": [...]}`, the format of picochat/tokenizer/chat.py) with
the task's own keys beside it: `answer` always, `letters` for multiple choice. Eval splits hold the
user's question only; train splits also hold the assistant's reply, so SFT can train on them.
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from picochat.errors import PicochatError
from picochat.runtime import picochat_home
from picochat.tokenizer.chat import assistant_parts

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class TaskDataError(PicochatError):
    """A task's data that is missing or malformed."""


def tasks_dir() -> Path:
    """Where `picochat eval chat --download` puts task data: $PICOCHAT_HOME/tasks/<folder>/."""
    return picochat_home() / "tasks"


class Task:
    name: str = ""
    kind: str = "generative"  # or "categorical": the answer is one of `letters`
    chance: float = 0.0  # accuracy of guessing, for ChatCORE's centering (nanochat's scripts/chat_eval.py)
    folder: str = ""  # the data's folder under the data root ("" for synthetic tasks)
    splits: tuple[str, ...] = ("test",)
    eval_split: str = "test"
    letters: tuple[str, ...] = ()

    def __init__(self, data_dir: str | Path | None = None):
        self.data_root = Path(data_dir).expanduser() if data_dir else tasks_dir()

    @property
    def data_dir(self) -> Path:
        return self.data_root / self.folder

    def load(self, split: str | None = None) -> list[dict]:
        split = split or self.eval_split
        if split not in self.splits:
            raise TaskDataError(f"task {self.name} has no split {split!r}; its splits are {', '.join(self.splits)}")
        return self._load(split)

    def _load(self, split: str) -> list[dict]:
        raise NotImplementedError

    def score(self, item: dict, completion_text: str) -> bool:
        raise NotImplementedError

    def require(self, path: Path) -> Path:
        """`path`, or an error that names it and says how to get the data."""
        if not path.exists():
            raise TaskDataError(f"{self.name}: {path} is missing; download the data with "
                                f"`picochat eval chat --task {self.name} --download` (into {self.data_root}) "
                                f"or point --data-dir at a folder holding {self.folder}/")
        return path


def answer_text(tokenizer, tokens: list[int]) -> str:
    """The text a completion is scored on, by the chat evals and by RL's reward alike: what the assistant
    wrote, without its tool calls and their outputs (a calculator's result is not the model's answer)."""
    return "".join(part["text"] for part in assistant_parts(tokenizer, tokens) if part["type"] == "text")


def prompt_conversation(item: dict) -> dict:
    """The item's conversation up to the user's question (a trailing assistant reply removed)."""
    messages = item["messages"]
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return {"messages": messages}


def read_jsonl(path: Path) -> list[dict]:
    """Every line of a (possibly gzipped) jsonl file as a dict; a bad line is named by file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path}, line {number}: not valid JSON ({e}); fix or re-download the file") from e
            if not isinstance(row, dict):
                raise TaskDataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def field(row: dict, key: str, path: Path, number: int):
    """row[key], or an error naming the file, the line and the missing field."""
    if key not in row:
        raise TaskDataError(f"{path}, line {number}: no field {key!r} (has {', '.join(row) or 'none'})")
    return row[key]


def multiple_choice_question(question: str, choices: list[str], letters: tuple[str, ...]) -> str:
    """The letter after each choice ("- choice=A"), which matters for small models (nanochat's tasks/common.py renders choices so)."""
    lines = "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices))
    return f"Multiple Choice question: {question}\n{lines}\nRespond only with the letter of the correct answer."


def multiple_choice_item(question: str, choices: list[str], answer: str, with_answer: bool, **extra) -> dict:
    letters = tuple("ABCDEFGHIJ"[:len(choices)])
    messages = [{"role": "user", "content": multiple_choice_question(question, choices, letters)}]
    if with_answer:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages, "answer": answer, "letters": letters, **extra}


def parse_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def last_number_matches(completion_text: str, answer: str) -> bool:
    """The last number in the completion equals the answer (commas stripped; 72.0 equals 72)."""
    numbers = NUMBER.findall(completion_text)
    expected = parse_number(answer)
    return bool(numbers) and expected is not None and parse_number(numbers[-1]) == expected
