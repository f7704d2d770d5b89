"""picochat's tokenizer as files `AutoTokenizer` loads, and back.

tiktoken stores only ranks; the `tokenizers` library's BPE wants merges. Each merge is recovered from the
ranks the way tiktoken's own educational encoder defines them (tiktoken/_educational.py): running BPE on
a token's bytes with only the lower ranks ends in exactly two parts, and those two merge into it. With
the merges listed in rank order and `ignore_merges` (a whole pre-token found in the vocabulary is one
token, as in tiktoken), the two encoders agree.
"""
from __future__ import annotations

import json
from pathlib import Path

from picochat.export.chat_template import CHAT_TEMPLATE
from picochat.export.hf_config import ExportError
from picochat.tokenizer.bpe import SPECIAL_TOKENS, Tokenizer

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet of byte-level BPE vocabularies (openai/gpt-2,
    src/encoder.py `bytes_to_unicode`): printable Latin-1 bytes stand for themselves, the rest map past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def as_unicode(token: bytes, table: dict[int, str]) -> str:
    return "".join(table[b] for b in token)


def merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two tokens that merge into `token`: BPE on its bytes with ranks below its own stops at two parts."""
    parts, limit = [bytes([b]) for b in token], ranks[token]
    while True:
        pairs = [(ranks.get(a + b, limit), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank >= limit:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ExportError(f"token {token!r} (rank {limit}) is not a merge of two lower-ranked tokens; "
                          f"the tokenizer's ranks are not a BPE, retrain it with `picochat tokenizer train`")
    return parts[0], parts[1]


def tokenizer_json(tok: Tokenizer) -> dict:
    """tokenizer.json for the `tokenizers` library: byte-level BPE, picochat's split regex, its specials,
    and BOS prepended to plain text (documents are BOS-prefixed in training)."""
    table = byte_to_unicode()
    by_rank = sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1])
    merges = [[as_unicode(a, table), as_unicode(b, table)]
              for token, _ in by_rank if len(token) > 1 for a, b in [merge_of(token, tok.mergeable_ranks)]]
    specials = [{"id": tok.special_id(t), "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for t in SPECIAL_TOKENS]
    bos = {"id": "<|bos|>", "type_id": 0}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": bos}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": bos}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": bos}, {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [tok.bos_id], "tokens": ["<|bos|>"]}}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {as_unicode(token, table): rank for token, rank in by_rank}, "merges": merges},
    }


def tokenizer_config(tok: Tokenizer, max_len: int) -> dict:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|assistant_end|>",
            "pad_token": "<|assistant_end|>", "model_max_length": max_len, "clean_up_tokenization_spaces": False,
            "add_bos_token": True, "chat_template": CHAT_TEMPLATE, "picochat_tokenizer": tok.name}


def write_tokenizer_files(tok: Tokenizer, out: Path, max_len: int) -> None:
    (out / TOKENIZER_FILE).write_text(json.dumps(tokenizer_json(tok), ensure_ascii=False) + "\n")
    (out / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tokenizer_config(tok, max_len), indent=2) + "\n")


def read_tokenizer_files(folder: Path, name: str) -> Tokenizer:
    """The picochat Tokenizer an export's tokenizer.json describes (ranks = BPE ids, the split regex, the specials)."""
    path = Path(folder) / TOKENIZER_FILE
    try:
        spec = json.loads(path.read_text())
        vocab, added = spec["model"]["vocab"], spec["added_tokens"]
        pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ExportError(f"{path} is not a tokenizer.json written by `picochat export` ({e!r}); re-export") from None
    from_unicode = {char: byte for byte, char in byte_to_unicode().items()}
    ranks = {bytes(from_unicode[c] for c in token): rank for token, rank in vocab.items()}
    specials = {t["content"]: t["id"] for t in added}
    expected = {t: len(ranks) + i for i, t in enumerate(SPECIAL_TOKENS)}
    if specials != expected:
        raise ExportError(f"{path} has special tokens {specials}, not picochat's {expected}; "
                          f"only folders written by `picochat export` can be imported")
    return Tokenizer(name, ranks, pattern)
