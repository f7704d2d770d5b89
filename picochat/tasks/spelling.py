"""Spelling: synthetic "spell the word X" and "how many r are in strawberry" items, seeded.

Small models see tokens, not letters, so spelling and letter counting must be taught. Counting
replies spell the word out, then check with a python `.count()` call, as nanochat's SFT data does
(nanochat's tasks/spellingbee.py); the engine's calculator runs that call.
"""
from __future__ import annotations

import random
import re
import string

from picochat.tasks.base import Task, last_number_matches
from picochat.tasks.words import WORDS

SPLIT_SIZES = {"train": 20_000, "test": 256}  # 256 test items as nanochat's spelling eval
SPLIT_SEEDS = {"train": 1, "test": 42}
LETTER_RUN = re.compile(r"\b[a-z](?:,[a-z])+\b")
SPELL_TEMPLATES = ("Spell the word: {word}", "How do you spell {word}?", "Spell out {word} letter by letter.")
COUNT_TEMPLATES = ("How many {letter} are in {word}?", "How many times does the letter {letter} appear in {word}?",
                   "Count the letter '{letter}' in the word {word}.")


def spelled(word: str) -> str:
    return ",".join(word)


def spell_item(word: str, template: str) -> dict:
    return {"messages": [{"role": "user", "content": template.format(word=word)},
                         {"role": "assistant", "content": f"{word}:{spelled(word)}"}],
            "answer": spelled(word), "question": "spell"}


def count_reply(word: str, letter: str) -> list[dict]:
    count = word.count(letter)
    return [{"type": "text", "text": f"{word} is spelled {spelled(word)}. Let me count the letter {letter} "
                                     f"with Python: "},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\nSo the letter {letter} appears in {word} this many times: {count}"}]


def count_item(word: str, letter: str, template: str) -> dict:
    return {"messages": [{"role": "user", "content": template.format(word=word, letter=letter)},
                         {"role": "assistant", "content": count_reply(word, letter)}],
            "answer": str(word.count(letter)), "question": "count"}


def make_item(rng: random.Random) -> dict:
    word = rng.choice(WORDS)
    if rng.random() < 0.5:
        return spell_item(word, rng.choice(SPELL_TEMPLATES))
    # mostly a letter of the word, sometimes one it lacks (the answer 0 must be learned too)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
    return count_item(word, letter, rng.choice(COUNT_TEMPLATES))


class SpellingTask(Task):
    name = "spelling"
    splits = ("train", "test")

    def _load(self, split: str) -> list[dict]:
        rng = random.Random(SPLIT_SEEDS[split])
        items = [make_item(rng) for _ in range(SPLIT_SIZES[split])]
        if split != "train":
            for item in items:
                item["messages"] = item["messages"][:1]
        return items

    def score(self, item: dict, completion_text: str) -> bool:
        if item["question"] == "count":
            return last_number_matches(completion_text, item["answer"])
        runs = LETTER_RUN.findall(completion_text.lower().replace(" ", ""))
        return bool(runs) and runs[-1] == item["answer"]
