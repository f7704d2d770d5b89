"""One config dataclass per stage; its CLI flags are generated from its fields, one to one.

A field's help text lives in `field(metadata={"help": ...})`. A field whose default is
None means "derived" (from the scaling-law plan or the base run) and is printed resolved.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path


def field_help(text: str, **extra) -> dict:
    """A field's metadata: its flag's help text, plus e.g. `choices`, `metavar` or `parse` (the flag's parser)."""
    return {"help": text, **extra}


def int_or_auto(text: str) -> int | None:
    """A flag's integer, or None ("derived") for `auto`."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {text!r}") from None


def _base_type(annotation):
    """The concrete type of a field annotation, unwrapping `X | None` and Optional[X]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return annotation


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field; defaults stay on the dataclass (argparse default is unset)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        kind = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        shown = "derived" if default is None else default
        help_text = f"{help_text} (default: {shown})" if help_text else f"(default: {shown})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if kind is bool:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            parse = f.metadata.get("parse") or (kind if kind in (int, float, str) else str)
            parser.add_argument(flag_name(f.name), type=parse,
                                metavar=f.metadata.get("metavar", kind.__name__.upper() if isinstance(kind, type) else "X"),
                                **kwargs)


def config_from_args(cls, args: argparse.Namespace, **extra):
    """Build the dataclass from parsed flags; flags not given keep the dataclass defaults."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update({k: v for k, v in extra.items() if k in names})
    return cls(**values)


def explicit_fields(args: argparse.Namespace, cls) -> set[str]:
    """Which fields the user set on the command line (argparse.SUPPRESS keeps the others out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k for k in vars(args) if k in names}


def config_to_dict(cfg) -> dict:
    def plain(v):
        if isinstance(v, Path):
            return str(v)
        if dataclasses.is_dataclass(v):
            return config_to_dict(v)
        return v
    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def format_config(cfg, title: str = "config") -> str:
    d = config_to_dict(cfg)
    width = max((len(k) for k in d), default=0)
    lines = [f"{title}:"] + [f"  {k:<{width}} = {v}" for k, v in d.items()]
    return "\n".join(lines)


def save_config(cfg, path: Path) -> None:
    path.write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")
