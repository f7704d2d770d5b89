"""Mixtures as data: parsing, built-ins, epochs, {data_dir}, and the errors a person sees."""
from __future__ import annotations

import json
import random

import pytest

from picochat.post.mixture import (builtin_mixtures, load_mixture, mixture_conversations, parse_mixture, repeat)
from picochat.post.sources import SourceContext, SourceError, check_conversation, load_source
from picochat.tokenizer.chat import ConversationError


def test_builtin_mixtures_load_and_name_their_sources():
    assert {"default", "offline"} <= set(builtin_mixtures())
    default = load_mixture("default")
    by_source = {spec.source: spec.epochs for spec in default.sources}
    assert by_source["smoltalk"] == 1 and by_source["mmlu-aux-train"] == 3 and by_source["gsm8k-train"] == 4
    assert by_source["identity"] == 2 and {"spelling", "arithmetic"} <= set(by_source)
    offline = load_mixture("offline")
    assert "smoltalk" not in {spec.source for spec in offline.sources}


def test_a_mixture_file_in_json_is_read(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "sources": [{"source": "arithmetic", "weight": 2, "args": {"count": 3}}]}))
    mixture = load_mixture(str(path))
    assert mixture.name == "mine" and mixture.sources[0].epochs == 2.0


@pytest.mark.parametrize("data, message", [
    ({"sources": []}, "non-empty list `sources`"),
    ({"sources": [{"source": "nope"}]}, "source 0: .* names no known source"),
    ({"sources": [{"source": "spelling", "epochs": -1}]}, "epochs must be a positive number"),
    ({"sources": [{"source": "spelling", "repeat": 2}]}, r"unknown keys \['repeat'\]"),
])
def test_bad_mixtures_are_refused_with_the_entry_named(data, message):
    with pytest.raises(SourceError, match=message):
        parse_mixture(data, "mine.yaml")


def test_fractional_epochs_repeat_and_sample():
    items = [{"i": i} for i in range(10)]
    repeated = repeat(items, 2.5, random.Random(0))
    assert len(repeated) == 25 and repeated[:20] == items * 2 and len({r["i"] for r in repeated[20:]}) == 5


def test_data_dir_placeholder_needs_the_flag():
    with pytest.raises(SourceError, match="pass --data-dir"):
        mixture_conversations(load_mixture("offline"), SourceContext(data_dir=None))


def test_generated_sources_are_seeded_and_well_formed():
    ctx = SourceContext(seed=3)
    for name in ("spelling", "letter-count", "arithmetic", "identity"):
        conversations = load_source(name, {"count": 20}, ctx)
        assert conversations and all(check_conversation(c) is None for c in conversations)
    assert load_source("arithmetic", {"count": 5}, ctx) == load_source("arithmetic", {"count": 5}, ctx)
    [arithmetic] = load_source("arithmetic", {"count": 1, "seed": 7}, ctx)
    call, output = arithmetic["messages"][1]["content"][:2]
    assert call["type"] == "python" and output["text"] == str(eval(call["text"]))  # the calculator's answer


def test_a_conversation_ending_with_the_user_is_not_sft_data():
    with pytest.raises(ConversationError, match="last message must be the assistant"):
        check_conversation({"messages": [{"role": "user", "content": "hi"}]})
