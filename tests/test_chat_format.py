"""Conversation rendering: token layout, loss masks, validation, and the way back to messages."""
import pytest

from infer_helpers import tiny_tokenizer
from picochat.tokenizer.chat import (
    ConversationError,
    assistant_parts,
    decode_conversation,
    format_parts,
    render_conversation,
    render_for_completion,
)

TOOL_CONVERSATION = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12 times 7?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me compute. "},
        {"type": "python", "text": "12*7"},
        {"type": "python_output", "text": "84"},
        {"type": "text", "text": "It is 84."},
    ]},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You are welcome."},
]}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_layout_and_mask_cover_exactly_what_the_assistant_writes(tok):
    ids, mask = render_conversation(tok, TOOL_CONVERSATION)
    s = tok.special_id
    assert len(ids) == len(mask) and ids[0] == tok.bos_id and mask[0] == 0
    expected_written = [*tok.encode("Let me compute. "), s("<|python_start|>"), *tok.encode("12*7"),
                        s("<|python_end|>"), *tok.encode("It is 84."), s("<|assistant_end|>"),
                        *tok.encode("You are welcome."), s("<|assistant_end|>")]
    assert [t for t, m in zip(ids, mask) if m] == expected_written
    read_only = [t for t, m in zip(ids, mask) if not m]
    assert s("<|output_start|>") in read_only and s("<|output_end|>") in read_only
    assert read_only.count(s("<|assistant_start|>")) == 2
    user_turn = ids[1:ids.index(s("<|user_end|>")) + 1]
    assert user_turn == [s("<|user_start|>"), *tok.encode("Be brief.\n\nWhat is 12 times 7?"), s("<|user_end|>")]


def test_render_for_completion_ends_ready_for_the_reply(tok):
    conversation = {"messages": TOOL_CONVERSATION["messages"][:4]}
    ids = render_for_completion(tok, conversation)
    assert ids[-1] == tok.special_id("<|assistant_start|>")
    assert ids[:-1] == render_conversation(tok, conversation)[0]
    with pytest.raises(ConversationError, match="last message"):
        render_for_completion(tok, TOOL_CONVERSATION)


@pytest.mark.parametrize("conversation, words", [
    ({"messages": []}, "no messages"),
    ({}, "no messages"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "'user' was expected"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "'assistant' was expected"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "roles are"),
    ({"messages": [{"role": "system", "content": "a"}]}, "followed by a user"),
    ({"messages": [{"role": "user", "content": [{"type": "python", "text": "1+1"}]}]}, "text parts"),
    ({"messages": [{"role": "user", "content": 3}]}, "content of type int"),
])
def test_invalid_conversations_raise_clear_errors(tok, conversation, words):
    with pytest.raises(ConversationError, match=words):
        render_conversation(tok, conversation)


def test_a_turn_over_max_len_is_refused(tok):
    long_turn = {"messages": [{"role": "user", "content": "hello " * 50}]}
    with pytest.raises(ConversationError, match="over the limit of 20"):
        render_conversation(tok, long_turn, max_len=20)


def test_decode_conversation_inverts_rendering(tok):
    ids, _ = render_conversation(tok, TOOL_CONVERSATION)
    decoded = decode_conversation(tok, ids)["messages"]
    assert [m["role"] for m in decoded] == ["user", "assistant", "user", "assistant"]
    assert decoded[0]["content"] == "Be brief.\n\nWhat is 12 times 7?"
    assert decoded[1]["content"] == TOOL_CONVERSATION["messages"][2]["content"]
    assert decoded[3]["content"] == [{"type": "text", "text": "You are welcome."}]
    assert format_parts(decoded[1]["content"]) == "Let me compute. [python: 12*7][= 84]It is 84."


def test_assistant_parts_stop_at_assistant_end(tok):
    ids = [*tok.encode("done"), tok.special_id("<|assistant_end|>"), *tok.encode("ignored")]
    assert assistant_parts(tok, ids) == [{"type": "text", "text": "done"}]
