"""GSM8K (openai/grade-school-math): word problems solved step by step with the calculator tool.

The reference answers carry calculator annotations `<<48/2=24>>`; each becomes a tool call in the
assistant's reply (a python part `48/2`, then its python_output `24`), so SFT teaches the model to use
the calculator the engine runs. The final answer follows `####`.
"""
from __future__ import annotations

import re

from picochat.tasks.base import Task, TaskDataError, field, last_number_matches, read_jsonl

ANNOTATION = re.compile(r"<<([^<>]*)>>")


def final_answer(answer: str) -> str:
    """The number after `####`, commas stripped."""
    if "####" not in answer:
        raise ValueError(f"a GSM8K answer ends with '#### <number>'; this one does not: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def tool_call_parts(answer: str) -> list[dict]:
    """The answer as content parts: text, and a python + python_output pair for each <<expr=result>>."""
    parts = []
    for i, piece in enumerate(ANNOTATION.split(answer)):
        if i % 2 == 0:  # text between annotations
            if piece:
                parts.append({"type": "text", "text": piece})
            continue
        expression, _, result = piece.rpartition("=")
        if not _:  # an annotation without "=": the whole of it is the expression
            expression, result = piece, ""
        parts.append({"type": "python", "text": expression})
        parts.append({"type": "python_output", "text": result})
    return parts


def gsm8k_conversation(question: str, answer: str) -> dict:
    """A full SFT/RL conversation: the question, then the reference solution with its tool calls."""
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": tool_call_parts(answer)}]}


class Gsm8kTask(Task):
    name = "gsm8k"
    folder = "gsm8k"
    splits = ("train", "test")

    def _load(self, split: str) -> list[dict]:
        path = self.require(self.data_dir / f"{split}.jsonl")
        items = []
        for number, row in enumerate(read_jsonl(path), start=1):
            question, answer = field(row, "question", path, number), field(row, "answer", path, number)
            try:
                final = final_answer(answer)
            except ValueError as e:
                raise TaskDataError(f"{path}, line {number}: {e}") from e
            conversation = gsm8k_conversation(question, answer)
            messages = conversation["messages"] if split == "train" else conversation["messages"][:1]
            items.append({"messages": messages, "answer": final})
        return items

    def score(self, item: dict, completion_text: str) -> bool:
        return last_number_matches(completion_text, item["answer"])
