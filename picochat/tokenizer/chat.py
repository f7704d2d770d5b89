"""Conversations as token ids: one format for SFT, RL, evals and chat.

A conversation is `{"messages": [{"role": "system" | "user" | "assistant", "content": ...}]}` where
content is a str or a list of parts `{"type": "text" | "python" | "python_output", "text": str}`.
Rendering follows nanochat (nanochat's tokenizer.py, render_conversation): BOS, then alternating
user/assistant turns, a system message merged into the first user turn (there is no system token).
The loss mask is 1 on what the assistant writes (its text, python calls and <|assistant_end|>) and 0
on everything it reads (user text, <|assistant_start|>, tool output).
"""
from __future__ import annotations

from picochat.errors import PicochatError
from picochat.tokenizer.bpe import Tokenizer

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "python_output")


class ConversationError(PicochatError):
    """A conversation that cannot be rendered: empty, roles out of order, a bad part, too long."""


def _parts(message: dict, index: int) -> list[dict]:
    """A message's content as a list of parts; a plain string is one text part."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ConversationError(f"message {index} has content of type {type(content).__name__}; "
                                f"use a string or a list of parts {{'type': ..., 'text': ...}}")
    for part in content:
        if not isinstance(part, dict) or part.get("type") not in PART_TYPES or not isinstance(part.get("text"), str):
            raise ConversationError(f"message {index} has a part {part!r}; each part needs a 'type' among "
                                    f"{', '.join(PART_TYPES)} and a string 'text'")
    return content


def _plain_text(message: dict, index: int) -> str:
    parts = _parts(message, index)
    if any(part["type"] != "text" for part in parts):
        raise ConversationError(f"message {index} ({message['role']}) may only hold text parts; "
                                f"python parts belong to assistant messages")
    return "".join(part["text"] for part in parts)


def validated_messages(conversation: dict) -> list[dict]:
    """The messages with a leading system message merged into the first user turn; roles checked."""
    messages = conversation.get("messages") if isinstance(conversation, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ConversationError("the conversation has no messages; expected {'messages': [{'role': 'user', ...}]}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else message
            raise ConversationError(f"message {i} has role {role!r}; roles are {', '.join(ROLES)}")
    if messages[0]["role"] == "system":
        system = _plain_text(messages[0], 0)
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise ConversationError("a system message must be followed by a user message")
        first_user = {"role": "user", "content": f"{system}\n\n{_plain_text(messages[1], 1)}"}
        messages = [first_user, *messages[2:]]
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ConversationError(f"message {i} has role {message['role']!r} where {expected!r} was expected; "
                                    f"turns go (system), user, assistant, user, ...")
    return messages


def _assistant_ids(tok: Tokenizer, message: dict, index: int) -> tuple[list[int], list[int]]:
    """The tokens of one assistant turn after <|assistant_start|>, with their loss mask."""
    ids, mask = [], []

    def add(tokens: list[int], value: int) -> None:
        ids.extend(tokens)
        mask.extend([value] * len(tokens))

    for part in _parts(message, index):
        text_ids = tok.encode(part["text"])
        if part["type"] == "text":
            add(text_ids, 1)
        elif part["type"] == "python":
            add([tok.special_id("<|python_start|>"), *text_ids, tok.special_id("<|python_end|>")], 1)
        else:  # the tool's output is read, not written, by the model
            add([tok.special_id("<|output_start|>"), *text_ids, tok.special_id("<|output_end|>")], 0)
    add([tok.special_id("<|assistant_end|>")], 1)
    return ids, mask


def _turn(tok: Tokenizer, message: dict, index: int) -> tuple[list[int], list[int]]:
    if message["role"] == "user":
        ids = [tok.special_id("<|user_start|>"), *tok.encode(_plain_text(message, index)),
               tok.special_id("<|user_end|>")]
        return ids, [0] * len(ids)
    ids, mask = _assistant_ids(tok, message, index)
    return [tok.special_id("<|assistant_start|>"), *ids], [0, *mask]


def render_conversation(tok: Tokenizer, conversation: dict, max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(ids, mask): BOS then every turn; mask 1 marks the tokens the assistant writes (its training targets)."""
    ids, mask = [tok.bos_id], [0]
    for i, message in enumerate(validated_messages(conversation)):
        turn_ids, turn_mask = _turn(tok, message, i)
        if max_len is not None and len(turn_ids) > max_len:
            raise ConversationError(f"message {i} ({message['role']}) is {len(turn_ids)} tokens, "
                                    f"over the limit of {max_len}; shorten it")
        ids += turn_ids
        mask += turn_mask
    return ids, mask


def render_for_completion(tok: Tokenizer, conversation: dict) -> list[int]:
    """The prompt for the assistant's next reply: the conversation, ending with <|assistant_start|>."""
    messages = validated_messages(conversation)
    if messages[-1]["role"] != "user":
        raise ConversationError("the last message must be from the user to ask for a reply, "
                                f"got {messages[-1]['role']!r}")
    ids, _ = render_conversation(tok, {"messages": messages})
    return [*ids, tok.special_id("<|assistant_start|>")]


def assistant_parts(tok: Tokenizer, ids: list[int]) -> list[dict]:
    """Token ids the assistant wrote (without <|assistant_start|>) as content parts; stops at <|assistant_end|>."""
    specials = {name: tok.special_id(name) for name in
                ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>", "<|assistant_end|>")}
    closing = {specials["<|python_start|>"]: ("python", specials["<|python_end|>"]),
               specials["<|output_start|>"]: ("python_output", specials["<|output_end|>"])}
    parts, kind, pending, end = [], "text", [], None

    def flush() -> None:
        if pending:
            parts.append({"type": kind, "text": tok.decode(pending)})
        pending.clear()

    for token in ids:
        if token == specials["<|assistant_end|>"]:
            break
        if kind == "text" and token in closing:
            flush()
            kind, end = closing[token]
        elif kind != "text" and token == end:
            flush()
            kind = "text"
        else:
            pending.append(token)
    flush()
    return parts


def format_parts(parts: list[dict]) -> str:
    """Parts as readable text: python calls and their results shown inline."""
    shown = {"text": "{}", "python": "[python: {}]", "python_output": "[= {}]"}
    return "".join(shown[part["type"]].format(part["text"]) for part in parts)


def decode_conversation(tok: Tokenizer, ids: list[int]) -> dict:
    """The inverse of render_conversation: ids (BOS first) back to {"messages": [...]} of parts."""
    user_start, user_end = tok.special_id("<|user_start|>"), tok.special_id("<|user_end|>")
    assistant_start, assistant_end = tok.special_id("<|assistant_start|>"), tok.special_id("<|assistant_end|>")
    messages, i = [], 0
    while i < len(ids):
        if ids[i] == user_start:
            end = ids.index(user_end, i) if user_end in ids[i:] else len(ids)
            messages.append({"role": "user", "content": tok.decode(ids[i + 1:end])})
            i = end + 1
        elif ids[i] == assistant_start:
            end = ids.index(assistant_end, i) if assistant_end in ids[i:] else len(ids)
            messages.append({"role": "assistant", "content": assistant_parts(tok, ids[i + 1:end])})
            i = end + 1
        else:
            i += 1  # BOS and anything outside a turn
    return {"messages": messages}
