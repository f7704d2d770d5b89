"""SFT sources: each a function (args, context) -> conversations, registered by name in SOURCES.

Public sources are read from local files when present and downloaded otherwise (SmolTalk, MMLU
auxiliary train, GSM8K); ARC train is read from a local folder; spelling, letter counting, arithmetic
and the identity set are generated here; `jsonl` reads conversations a person wrote.
"""
from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from picochat.errors import PicochatError
from picochat.post import generated
from picochat.post.download import fetch_file
from picochat.runtime import datasets_dir, print0
from picochat.tasks.arc import ArcTask
from picochat.tasks.base import multiple_choice_item
from picochat.tasks.gsm8k import Gsm8kTask
from picochat.tasks.mmlu import MmluTask
from picochat.tasks.spelling import COUNT_TEMPLATES, SPELL_TEMPLATES, count_item, spell_item
from picochat.tasks.words import WORDS
from picochat.tokenizer.chat import PART_TYPES, ConversationError, validated_messages

IDENTITY_FILE = Path(__file__).with_name("identity.jsonl")
HF = "https://huggingface.co/datasets"
# The public files: Hugging Face parquet exports, and GSM8K from its own repository.
SMOLTALK_URL = HF + "/HuggingFaceTB/smol-smoltalk/resolve/main/data/{split}-00000-of-00001.parquet"
MMLU_AUX_URL = HF + "/cais/mmlu/resolve/main/all/auxiliary_train-00000-of-00001.parquet"
GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"


class SourceError(PicochatError):
    """A source that is unknown, misconfigured, or whose data is malformed."""


@dataclass
class SourceContext:
    """What sources may read besides their own args: where local data lives, the identity file, a seed."""
    data_dir: Path | None = None  # a folder holding gsm8k/, arc/, mmlu/ as `picochat` downloads them
    identity_file: Path = IDENTITY_FILE
    seed: int = 0
    download_dir: Path = field(default_factory=lambda: datasets_dir() / "post")


def _data_path(ctx: SourceContext, args: dict, key: str, default_rel: str) -> Path | None:
    """args[key] if given, else data_dir/default_rel when data_dir is set, else None (download)."""
    if key in args:
        return Path(args[key]).expanduser()
    return ctx.data_dir / default_rel if ctx.data_dir else None


# --- public data ------------------------------------------------------------------------------

def smoltalk(args: dict, ctx: SourceContext) -> list[dict]:
    split = args.get("split", "train")
    path = Path(args["path"]) if "path" in args else fetch_file(
        SMOLTALK_URL.format(split=split), ctx.download_dir / "smol-smoltalk" / f"{split}.parquet")
    rows = pq.read_table(path, columns=["messages"]).column("messages").to_pylist()
    return [{"messages": [{"role": m["role"], "content": m["content"]} for m in messages]} for messages in rows]


def mmlu_aux_train(args: dict, ctx: SourceContext) -> list[dict]:
    """MMLU's auxiliary_train: the hendrycks CSV folder when local (data_dir/mmlu/auxiliary_train),
    else cais/mmlu's parquet export, rendered like the MMLU eval's questions."""
    local = _data_path(ctx, args, "dir", "mmlu")
    if local is not None and (local / "auxiliary_train").is_dir():
        return MmluTask(local.parent).load("train")
    path = fetch_file(MMLU_AUX_URL, ctx.download_dir / "mmlu" / "auxiliary_train.parquet")
    table = pq.read_table(path, columns=["question", "choices", "answer"]).to_pylist()
    return [multiple_choice_item(row["question"], row["choices"], "ABCD"[row["answer"]], with_answer=True)
            for row in table]


def gsm8k_train(args: dict, ctx: SourceContext) -> list[dict]:
    path = _data_path(ctx, args, "path", "gsm8k/train.jsonl")
    if path is None or not path.is_file():
        if path is not None and "path" in args:
            raise SourceError(f"gsm8k-train: {path} does not exist; fix the mixture's path or drop it to download")
        path = fetch_file(GSM8K_URL.format(split="train"), ctx.download_dir / "gsm8k" / "train.jsonl")
    task = Gsm8kTask(path.parent.parent)
    task.folder = path.parent.name  # the task reads <root>/<folder>/train.jsonl
    return task.load("train")


def arc_train(args: dict, ctx: SourceContext) -> list[dict]:
    folder = _data_path(ctx, args, "dir", "arc")
    if folder is None:
        raise SourceError("arc-train reads local files: pass --data-dir (a folder holding arc/ARC-Easy-Train.jsonl) "
                          "or give the mixture entry args: {dir: PATH}")
    subsets = args.get("subsets", ["Easy", "Challenge"])
    items = []
    for subset in subsets:
        task = ArcTask(subset, folder.parent)
        task.folder = folder.name
        items += task.load("train")
    return items


# --- generated --------------------------------------------------------------------------------

def spelling(args: dict, ctx: SourceContext) -> list[dict]:
    """"Spell the word" rows in the spelling eval's own format (picochat/tasks/spelling.py)."""
    rng = random.Random(int(args.get("seed", ctx.seed)))
    return [spell_item(rng.choice(WORDS), rng.choice(SPELL_TEMPLATES)) for _ in range(int(args.get("count", 10_000)))]


def letter_count(args: dict, ctx: SourceContext) -> list[dict]:
    """Letter counting answered by spelling out, then a `.count()` calculator call (the eval's format)."""
    rng = random.Random(int(args.get("seed", ctx.seed)))
    rows = []
    for _ in range(int(args.get("count", 10_000))):
        word = rng.choice(WORDS)
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
        rows.append(count_item(word, letter, rng.choice(COUNT_TEMPLATES)))
    return rows


def arithmetic(args: dict, ctx: SourceContext) -> list[dict]:
    items = generated.arithmetic_items(int(args.get("count", 10_000)), int(args.get("seed", ctx.seed)),
                                       args.get("ops", "+-*"))
    return [generated.arithmetic_conversation(*item) for item in items]


def identity(args: dict, ctx: SourceContext) -> list[dict]:
    return read_conversations(Path(args.get("path", ctx.identity_file)).expanduser())


def local_jsonl(args: dict, ctx: SourceContext) -> list[dict]:
    if "path" not in args:
        raise SourceError("the jsonl source needs args: {path: FILE} (one conversation per line)")
    return read_conversations(Path(args["path"]).expanduser())


def read_conversations(path: Path) -> list[dict]:
    """One {"messages": [...]} per line, each checked; an error names the file and the line."""
    if not path.is_file():
        raise SourceError(f"{path} does not exist; write one conversation per line as "
                          '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}')
    conversations = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            conversation = json.loads(line)
            check_conversation(conversation)
        except (json.JSONDecodeError, ConversationError) as e:
            raise SourceError(f"{path}, line {number}: {e}") from e
        conversations.append(conversation)
    return conversations


def check_conversation(conversation: dict) -> None:
    """Roles in order, content a string or a list of well-formed parts (what render_conversation needs)."""
    for i, message in enumerate(validated_messages(conversation)):
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list) or not all(isinstance(p, dict) and p.get("type") in PART_TYPES
                                                  and isinstance(p.get("text"), str) for p in parts):
            raise ConversationError(f"message {i} has content {content!r}; use a string or a list of parts "
                                    f"{{'type': one of {', '.join(PART_TYPES)}, 'text': str}}")
        if message["role"] == "user" and any(p["type"] != "text" for p in parts):
            raise ConversationError(f"message {i} (user) may only hold text parts")
    if validated_messages(conversation)[-1]["role"] != "assistant":
        raise ConversationError("the last message must be the assistant's: SFT trains on what the assistant writes")


SOURCES: dict[str, Callable[[dict, SourceContext], list[dict]]] = {
    "smoltalk": smoltalk, "mmlu-aux-train": mmlu_aux_train, "gsm8k-train": gsm8k_train, "arc-train": arc_train,
    "spelling": spelling, "letter-count": letter_count, "arithmetic": arithmetic, "identity": identity,
    "jsonl": local_jsonl,
}


def load_source(name: str, args: dict, ctx: SourceContext) -> list[dict]:
    if name not in SOURCES:
        raise SourceError(f"unknown source {name!r}; the sources are {', '.join(SOURCES)}")
    conversations = SOURCES[name](args, ctx)
    print0(f"  source {name}: {len(conversations):,} conversations")
    return conversations
