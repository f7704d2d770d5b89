"""HumanEval (openai/human-eval): 164 Python functions to complete, checked by running their tests."""
from __future__ import annotations

import re

from picochat.tasks.base import Task, field, read_jsonl
from picochat.tasks.humaneval_sandbox import run_program

CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
IMPORT_LINE = re.compile(r"^(?:import|from)\s.*$", re.MULTILINE)


def extract_code(completion_text: str) -> str:
    """The first ```python block of a completion, or the completion itself when it has none."""
    match = CODE_BLOCK.search(completion_text)
    return match.group(1) if match else completion_text


def humaneval_program(item: dict, completion_text: str) -> str:
    """The program to run: the completed function, the task's tests, then check(entry_point).

    A completion that defines the function is run after the prompt's imports; one that only writes
    the body continues the prompt (the signature and docstring).
    """
    code = extract_code(completion_text)
    if re.search(rf"^\s*def\s+{re.escape(item['entry_point'])}\s*\(", code, re.MULTILINE):
        solution = "\n".join(IMPORT_LINE.findall(item["prompt"])) + "\n\n" + code
    else:
        solution = item["prompt"] + code
    return f"{solution}\n\n{item['test']}\n\ncheck({item['entry_point']})\n"


class HumanEvalTask(Task):
    name = "humaneval"
    folder = "humaneval"
    splits = ("test",)

    def _load(self, split: str) -> list[dict]:
        path = self.require(self.data_dir / "HumanEval.jsonl.gz")
        items = []
        for number, row in enumerate(read_jsonl(path), start=1):
            keys = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
            task_id, prompt, entry_point, solution, test = (field(row, key, path, number) for key in keys)
            items.append({"messages": [{"role": "user", "content": prompt}], "answer": prompt + solution,
                          "task_id": task_id, "prompt": prompt, "entry_point": entry_point, "test": test})
        return items

    def score(self, item: dict, completion_text: str) -> bool:
        return run_program(humaneval_program(item, completion_text)).passed
