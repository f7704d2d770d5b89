"""Talking to a model in the terminal: an interactive REPL with history, or one prompt with -p."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from picochat.infer.engine import Engine, PromptTooLongError, SamplingParams, StreamDecoder
from picochat.tokenizer.chat import render_for_completion

HELP = "commands: /clear starts a new conversation, /quit (or Ctrl-D) leaves"
# how a calculator call shows in the terminal: [calc: 12*7] -> 84
TOOL_MARKS = {"<|python_start|>": "[calc: ", "<|python_end|>": "]", "<|output_start|>": " -> ", "<|output_end|>": ""}


@dataclass
class ChatConfig:
    run: str = field(default="", metadata={"help": "run name or checkpoint path to chat with"})
    step: int | None = field(default=None, metadata={"help": "checkpoint step (latest when not given)"})
    prompt: str | None = field(default=None, metadata={"help": "one-shot: print the reply to this prompt and exit"})
    system: str | None = field(default=None, metadata={"help": "a system prompt that opens every conversation"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (0 = greedy)"})
    top_k: int = field(default=50, metadata={"help": "sample among the k most likely tokens (0 = all)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1 = off)"})
    max_tokens: int = field(default=512, metadata={"help": "longest reply, in tokens"})
    seed: int = field(default=42, metadata={"help": "sampling seed (each reply uses seed + its turn number)"})
    device: str | None = field(default=None, metadata={"help": "cuda, mps or cpu (autodetected when not given)"})


def stream_reply(engine: Engine, messages: list[dict], params: SamplingParams, out: TextIO) -> str:
    """Print the assistant's reply as it is generated; return its text."""
    prompt = render_for_completion(engine.tokenizer, {"messages": messages})
    marks = {engine.tokenizer.special_id(name): shown for name, shown in TOOL_MARKS.items()}
    decoder, pieces = StreamDecoder(engine.tokenizer), []
    for [token] in engine.generate(prompt, params):
        if token is None or token in engine.stop_ids:
            break
        if token in marks:  # the reply keeps the token; the terminal shows its readable mark
            text = decoder.flush()
            pieces += [text, engine.tokenizer.decode([token])]
            out.write(text + marks[token])
        else:
            pieces.append(decoder.push(token))
            out.write(pieces[-1])
        out.flush()
    pieces.append(decoder.flush())
    out.write(pieces[-1] + "\n")
    return "".join(pieces)


def sampling_params(cfg: ChatConfig, turn: int) -> SamplingParams:
    return SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                          top_p=cfg.top_p if cfg.top_p < 1 else None, seed=cfg.seed + turn)


def chat_loop(engine: Engine, cfg: ChatConfig, read=input, out: TextIO | None = None) -> None:
    """The REPL: each line is a user turn; the reply streams; the conversation grows until /clear."""
    out = out or sys.stdout
    opening = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(opening)
    out.write(f"picochat: talking to {cfg.run} ({HELP})\n")
    while True:
        try:
            line = read("\nyou> ").strip()
        except EOFError:
            out.write("\n")
            return
        if line in ("/quit", "/exit", "quit", "exit"):
            return
        if line == "/clear":
            messages = list(opening)
            out.write("(new conversation)\n")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        out.write("picochat> ")
        try:
            reply = stream_reply(engine, messages, sampling_params(cfg, len(messages)), out)
        except PromptTooLongError as e:
            out.write(f"\n({e}; type /clear to start over)\n")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply})


def run_chat(engine: Engine, cfg: ChatConfig, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if cfg.prompt is not None:
        opening = [{"role": "system", "content": cfg.system}] if cfg.system else []
        stream_reply(engine, [*opening, {"role": "user", "content": cfg.prompt}], sampling_params(cfg, 0), out)
    else:
        chat_loop(engine, cfg, out=out)
