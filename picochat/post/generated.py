"""Conversations picochat writes itself: 2-digit arithmetic through the calculator, and made-up words.

(Spelling and letter counting come from picochat/tasks/spelling.py, so SFT rows match the eval's format.)
Each generator is a pure function of its arguments and a seed, so disjoint seeds give held-out items.
The arithmetic answer goes through the calculator (a python part whose output the engine injects at
inference), as nanochat's letter-counting rows do.
"""
from __future__ import annotations

import random

CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"


def pseudo_word(rng: random.Random, min_syllables: int = 1, max_syllables: int = 3) -> str:
    """A pronounceable made-up word (consonant-vowel syllables, sometimes a closing consonant):
    unlimited, reproducible items with no word list to ship."""
    syllables = [rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(min_syllables, max_syllables))]
    return "".join(syllables) + (rng.choice(CONSONANTS) if rng.random() < 0.5 else "")


def arithmetic_conversation(a: int, op: str, b: int) -> dict:
    """`a op b` answered through the calculator, the result restated after it."""
    expression = f"{a} {op} {b}"
    result = str(eval_arithmetic(a, op, b))
    reply = [{"type": "python", "text": expression},
             {"type": "python_output", "text": result},
             {"type": "text", "text": f"{expression} = {result}. #### {result}"}]
    return {"messages": [{"role": "user", "content": f"What is {expression}?"},
                         {"role": "assistant", "content": reply}]}


def eval_arithmetic(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def arithmetic_items(count: int, seed: int, ops: str = "+-*") -> list[tuple[int, str, int]]:
    rng = random.Random(seed)
    return [(rng.randint(10, 99), rng.choice(ops), rng.randint(10, 99)) for _ in range(count)]
