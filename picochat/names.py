"""Names a user gives (run, dataset, tokenizer, sweep) are plain names, never paths.

A name becomes a folder under $PICOCHAT_HOME; one with a separator or `..` could point anywhere
(`--name ../runs/x` would replace a trained run), so it is refused at the boundary.
"""
from __future__ import annotations

import re

from picochat.errors import PicochatError

PLAIN_NAME_MAX = 128
PLAIN_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._+-]{{0,{PLAIN_NAME_MAX - 1}}}$")


class BadNameError(PicochatError):
    """A run, dataset, tokenizer or sweep name that is not a plain name."""


def plain_name(name: str, what: str) -> str:
    """`name` unchanged if it is a plain name (letters, digits, `.`, `_`, `+`, `-`; not starting with `.`), else refused.

    `what` is the flag or noun for the message, e.g. "--run" or "dataset name"."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name) or ".." in name:
        raise BadNameError(f"{what} {name!r} is not a plain name: use letters, digits, '.', '_', '+' or '-' "
                           f"(no '/', no '..', not starting with '.'); names live under $PICOCHAT_HOME")
    return name
