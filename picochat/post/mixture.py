"""An SFT mixture is data: a YAML/JSON file naming sources, how many epochs of each, and their args.

    name: offline
    sources:
      - {source: gsm8k-train, epochs: 4, args: {path: "{data_dir}/gsm8k/train.jsonl"}}
      - {source: spelling, args: {count: 20000}}

`epochs` may be fractional: 2.5 is every conversation twice plus a seeded random half once more.
String args may use `{data_dir}` (the --data-dir flag). Built-in mixtures live in picochat/post/mixtures/.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from picochat.post.sources import SOURCES, SourceContext, SourceError, load_source
from picochat.runtime import print0

MIXTURES_DIR = Path(__file__).with_name("mixtures")


@dataclass
class SourceSpec:
    source: str
    epochs: float = 1.0
    args: dict = field(default_factory=dict)


@dataclass
class Mixture:
    name: str
    sources: list[SourceSpec]


def builtin_mixtures() -> list[str]:
    return sorted(p.stem for p in MIXTURES_DIR.glob("*.yaml"))


def mixture_file(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return path
    builtin = MIXTURES_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    raise SourceError(f"--mixture {name_or_path!r} is neither a built-in mixture ({', '.join(builtin_mixtures())}) "
                      f"nor an existing .yaml/.json file")


def parse_mixture(data, origin: str) -> Mixture:
    """Check a parsed mixture file; every error names the file and the entry."""
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list) or not data["sources"]:
        raise SourceError(f"{origin}: a mixture is a mapping with `name` and a non-empty list `sources`")
    specs = []
    for i, entry in enumerate(data["sources"]):
        where = f"{origin}, source {i}"
        if not isinstance(entry, dict) or entry.get("source") not in SOURCES:
            raise SourceError(f"{where}: {entry!r} names no known source; the sources are {', '.join(SOURCES)}")
        unknown = set(entry) - {"source", "epochs", "weight", "args"}
        if unknown:
            raise SourceError(f"{where}: unknown keys {sorted(unknown)}; use source, epochs (or weight), args")
        epochs = entry.get("epochs", entry.get("weight", 1.0))
        if not isinstance(epochs, (int, float)) or epochs <= 0:
            raise SourceError(f"{where}: epochs must be a positive number, got {epochs!r}")
        args = entry.get("args") or {}
        if not isinstance(args, dict):
            raise SourceError(f"{where}: args must be a mapping, got {args!r}")
        specs.append(SourceSpec(entry["source"], float(epochs), args))
    return Mixture(str(data.get("name", origin)), specs)


def load_mixture(name_or_path: str) -> Mixture:
    path = mixture_file(name_or_path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SourceError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from e
    return parse_mixture(data, str(path))


def expand_args(args: dict, ctx: SourceContext, source: str) -> dict:
    """`{data_dir}` in string args replaced by --data-dir (refused when it is not set)."""
    expanded = {}
    for key, value in args.items():
        if isinstance(value, str) and "{data_dir}" in value:
            if ctx.data_dir is None:
                raise SourceError(f"source {source} reads {value!r}: pass --data-dir DIR "
                                  f"(a folder holding gsm8k/, arc/, mmlu/)")
            value = value.replace("{data_dir}", str(ctx.data_dir))
        expanded[key] = value
    return expanded


def repeat(conversations: list[dict], epochs: float, rng: random.Random) -> list[dict]:
    """Every conversation int(epochs) times, plus a random fraction of them once more."""
    whole, fraction = divmod(epochs, 1.0)
    extra = rng.sample(conversations, round(fraction * len(conversations))) if fraction else []
    return conversations * int(whole) + extra


def mixture_conversations(mixture: Mixture, ctx: SourceContext) -> list[dict]:
    """All the mixture's conversations, repeated per their epochs, shuffled with the context's seed."""
    rng = random.Random(ctx.seed)
    print0(f"mixture {mixture.name}:")
    conversations = []
    for spec in mixture.sources:
        loaded = load_source(spec.source, expand_args(spec.args, ctx, spec.source), ctx)
        conversations += repeat(loaded, spec.epochs, rng)
    rng.shuffle(conversations)
    return conversations
