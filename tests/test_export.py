"""`picochat export` / `import-hf`, checked by transformers itself (no mocks): logits, greedy generation with the
KV cache, the tokenizer, the chat template, and export -> import-hf -> eval bpb, on a briefly trained d2 and on
a random d2 with sliding windows (SL) and grouped-query attention."""
from __future__ import annotations

import dataclasses
import gzip
import json
import random
import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # the module fixture trains a d2 and exports two runs
pytest.importorskip("transformers", reason="the `hf` extra is not installed: pip install -e '.[hf]'")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from picochat.checkpoint import load_model_from_run, run_dir, save_checkpoint  # noqa: E402
from picochat.cli import main  # noqa: E402
from picochat.data.dataset import open_dataset  # noqa: E402
from picochat.data.importer import ImportConfig, import_dataset  # noqa: E402
from picochat.export.hf_export import export_run  # noqa: E402
from picochat.infer.engine import Engine, SamplingParams  # noqa: E402
from picochat.model.config import GPTConfig  # noqa: E402
from picochat.model.gpt import GPT  # noqa: E402
from picochat.runtime import Runtime  # noqa: E402
from picochat.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from picochat.tokenizer.chat import render_conversation, render_for_completion  # noqa: E402
from conftest import home_at  # noqa: E402

WIKI = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrain" / "wikipedia"
CPU_FP32 = Runtime(torch.device("cpu"), torch.float32)
SEQ_LEN = 64  # windows of the random model: S = 32, L = 64
WORDS = "the cat sat on a mat and dog ran to big red house with small blue car in park near old tree".split()


def wiki_lines(name: str) -> list[str]:
    """Non-empty text lines of one WikiExtractor file (markup lines dropped)."""
    with gzip.open(WIKI / name, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip() and not line.startswith(("<doc", "</doc"))]


def generated_lines(count: int, seed: int) -> list[str]:
    """Stand-in text when ../shared/data is absent: words, numbers, punctuation, accents and spacing."""
    rng = random.Random(seed)
    extras = ["1984", "3.14", "naïve", "Ünïcödé", "—", "it's", "  ", "\t", "(x)", "日本", "🙂"]
    return [" ".join(rng.choice(WORDS + extras) for _ in range(rng.randint(3, 40))) for _ in range(count)]


def training_documents() -> list[str]:
    if (WIKI / "wiki_00.gz").is_file():
        return ["\n".join(wiki_lines("wiki_00.gz")[i:i + 8]) for i in range(0, 4000, 8)]
    return ["\n".join(generated_lines(8, seed)) for seed in range(500)]


def held_out_lines() -> list[str]:
    return wiki_lines("wiki_01.gz")[:1000] if (WIKI / "wiki_01.gz").is_file() else generated_lines(1000, 12345)


def save_random_run(tok: Tokenizer) -> None:
    """A d2 with windows SL and 2 kv heads for 4 query heads; every block matrix random (picochat's own init
    zeroes the output projections, which would leave attention out of the logits)."""
    torch.manual_seed(0)
    cfg = GPTConfig(depth=2, vocab_size=tok.vocab_size, aspect_ratio=32, head_dim=16, n_kv_heads=2,
                    max_seq_len=SEQ_LEN, window_pattern="SL")
    model = GPT(cfg)
    model.init_weights()
    with torch.no_grad():
        for p in model.param_groups()["matrix"]:
            p.normal_(std=0.3 / p.size(1) ** 0.5)
    meta = {"model_config": dataclasses.asdict(cfg), "run_config": {}, "tokenizer": tok.name, "dataset": "text"}
    save_checkpoint(run_dir("random"), 0, model.state_dict(), {}, meta)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Dataset `text`, its 1024-token tokenizer, run `base` (6 training steps of a d2, windows L, no GQA) and
    run `random`, each exported (the random one in shards of at most 60 kB)."""
    root = tmp_path_factory.mktemp("home")
    with home_at(root):
        docs = root / "docs.jsonl"
        docs.write_text("".join(json.dumps({"text": d}) + "\n" for d in training_documents()))
        import_dataset([docs], "text", ImportConfig(format="jsonl", val_fraction=0.1, docs_per_row_group=32))
        tok = train_tokenizer(open_dataset("text").iter_documents("train"), "text", vocab_size=1024, dataset="text")
        assert main(["train", "--dataset", "text", "--run", "base", "--depth", "2", "--aspect-ratio", "32",
                     "--head-dim", "32", "--max-seq-len", str(SEQ_LEN), "--window-pattern", "L",
                     "--device-batch-size", "4", "--total-batch-size", "256", "--num-iterations", "6",
                     "--warmup-steps", "2", "--matrix-lr", "0.02", "--embedding-lr", "0.1", "--lm-head-lr", "0.01",
                     "--eval-every", "3", "--eval-tokens", "512", "--sample-every", "0", "--device", "cpu",
                     "--dtype", "float32", "--loader-buffer-docs", "64"]) == 0
        save_random_run(tok)
        export_run("base", root / "hf-base")
        export_run("random", root / "hf-random", max_shard_bytes=60_000)
        yield root


@pytest.fixture(scope="module", params=["base", "random"])
def pair(request, home):
    """(picochat model, tokenizer, transformers model) of one run."""
    model, tok, _ = load_model_from_run(request.param, CPU_FP32)
    hf_model = AutoModelForCausalLM.from_pretrained(home / f"hf-{request.param}", trust_remote_code=True,
                                                    dtype=torch.float32)
    return model, tok, hf_model


def real_text_ids(tok: Tokenizer, length: int) -> list[int]:
    text = " ".join(open_dataset("text").iter_documents("val"))
    return tok.encode(text, prepend_bos=True)[:length]


@torch.no_grad()
def test_exported_logits_equal_picochat_on_random_and_real_text(pair):
    model, tok, hf_model = pair
    random_ids = torch.randint(0, tok.vocab_size, (2, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    real_ids = torch.tensor([real_text_ids(tok, SEQ_LEN)])
    for ids in (random_ids, real_ids):
        expected = model(ids)
        assert (hf_model(ids).logits - expected).abs().max().item() <= 1e-4


@torch.no_grad()
def test_greedy_generation_equals_the_engine_token_for_token_with_the_kv_cache(pair):
    model, tok, hf_model = pair
    prompt = real_text_ids(tok, 24)
    [completion] = Engine(model, tok).generate_completions(prompt, SamplingParams(max_tokens=32, temperature=0))
    out = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32, use_cache=True)
    generated = out[0, len(prompt):].tolist()
    if completion.finish_reason == "length":
        assert generated == completion.tokens and len(generated) == 32
    else:  # the engine leaves out the stop token it ended on; transformers ends on it too
        assert generated[:-1] == completion.tokens and generated[-1] in (tok.bos_id, tok.special_id("<|assistant_end|>"))


@torch.no_grad()
def test_the_random_model_decodes_past_its_sliding_window(home):
    """The prompt (24) plus 32 new tokens is past the 32-token window of layer 0: decode must apply it."""
    model, tok, _ = load_model_from_run("random", CPU_FP32)
    [completion] = Engine(model, tok).generate_completions(real_text_ids(tok, 24),
                                                           SamplingParams(max_tokens=32, temperature=0))
    assert completion.finish_reason == "length" and model.config.window_sizes()[0] == 32


@torch.no_grad()
def test_a_left_padded_batch_computes_what_each_prompt_alone_would(pair):
    model, tok, hf_model = pair
    short, long = real_text_ids(tok, 9), real_text_ids(tok, 40)
    pad = len(long) - len(short)
    batch = torch.tensor([[0] * pad + short, long])
    mask = torch.tensor([[0] * pad + [1] * len(short), [1] * len(long)])
    logits = hf_model(batch, attention_mask=mask).logits
    assert (logits[0, pad:] - model(torch.tensor([short]))[0]).abs().max().item() <= 1e-4
    assert (logits[1] - model(torch.tensor([long]))[0]).abs().max().item() <= 1e-4


def test_autotokenizer_encodes_held_out_lines_to_picochats_ids(home):
    tok = Tokenizer.load("text")
    hf_tok = AutoTokenizer.from_pretrained(home / "hf-base")
    lines = held_out_lines()
    assert len(lines) == 1000
    expected = tok.encode_batch(lines)
    assert hf_tok(lines, add_special_tokens=False)["input_ids"] == expected
    assert hf_tok(lines[0])["input_ids"] == tok.encode(lines[0], prepend_bos=True)  # documents start with BOS
    assert hf_tok.decode(expected[1]) == lines[1]


CONVERSATIONS = [
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Sky colour?"}],
    [{"role": "system", "content": "Use the calculator.\nBe brief."},
     {"role": "user", "content": "What is 12*7?"},
     {"role": "assistant", "content": [{"type": "text", "text": "Let me compute: "},
                                       {"type": "python", "text": "12*7"},
                                       {"type": "python_output", "text": "84"},
                                       {"type": "text", "text": " so it is 84."}]},
     {"role": "user", "content": [{"type": "text", "text": "And 84 / 2?"}]}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["system", "system-and-tool-call"])
def test_chat_template_renders_picochats_ids(home, messages):
    tok = Tokenizer.load("text")
    hf_tok = AutoTokenizer.from_pretrained(home / "hf-base")
    prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert prompt == render_for_completion(tok, {"messages": messages})
    if messages[-2]["role"] == "assistant":
        whole = hf_tok.apply_chat_template(messages[:-1], tokenize=True)["input_ids"]
        assert whole == render_conversation(tok, {"messages": messages[:-1]})[0]


def test_chat_template_refuses_turns_out_of_order(home):
    hf_tok = AutoTokenizer.from_pretrained(home / "hf-base")
    with pytest.raises(Exception, match="message 1 has role user where assistant was expected"):
        hf_tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def eval_bpb(run: str, capsys) -> float:
    assert main(["eval", "bpb", "--run", run, "--tokens", "2048", "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bpb"]


def test_export_import_hf_then_eval_bpb_gives_the_same_bpb(home, capsys):
    assert main(["import-hf", str(home / "hf-base"), "--run", "back"]) == 0
    original, restored = load_model_from_run("base", CPU_FP32), load_model_from_run("back", CPU_FP32)
    assert all(torch.equal(a, b) for a, b in zip(original[0].state_dict().values(),
                                                  restored[0].state_dict().values()))
    assert restored[1].name == "text" and restored[2]["step"] == 6  # the identical tokenizer is reused
    assert eval_bpb("back", capsys) == eval_bpb("base", capsys)


def test_a_sharded_export_has_an_index_and_imports_back(home):
    index = json.loads((home / "hf-random" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (home / "hf-random" / "model.safetensors").exists()
    assert main(["import-hf", str(home / "hf-random"), "--run", "random-back"]) == 0
    original, restored = load_model_from_run("random", CPU_FP32)[0], load_model_from_run("random-back", CPU_FP32)[0]
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), restored.state_dict().values()))


def test_config_records_every_shape_field_and_constant(home):
    config = json.loads((home / "hf-random" / "config.json").read_text())
    assert {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                   "head_dim", "window_pattern", "window_sizes", "value_embedding_layers")} == {
        "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "window_pattern": "SL", "window_sizes": [32, 64], "value_embedding_layers": [1]}
    assert (config["softcap"], config["rope_base"], config["qk_scale"], config["ve_gate_scale"]) == (15.0, 1e5, 1.2, 3)
    generation = json.loads((home / "hf-random" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [Tokenizer.load("text").special_id("<|assistant_end|>"),
                                          Tokenizer.load("text").bos_id]


def test_model_card_reports_training_and_says_what_is_missing(home):
    card = (home / "hf-base" / "README.md").read_text()
    assert "| data | text |" in card and "| steps | 6 |" in card and "| tokens | 1.54e+03 |" in card
    assert re.search(r"\| validation bpb \(last evaluation\) \| \d\.\d{4} \|", card)
    assert "| CORE | not recorded |" in card and "Chat evaluations: not recorded" in card


def test_bfloat16_export_stores_bfloat16_weights_and_loads(home, tmp_path):
    from safetensors import safe_open

    export_run("base", tmp_path / "bf16", dtype="bfloat16")
    with safe_open(tmp_path / "bf16" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(name).dtype for name in f.keys()} == {torch.bfloat16}
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", trust_remote_code=True)
    assert hf_model.dtype == torch.bfloat16


# --- bad input: one line, exit 2, nothing lost -------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["export", "--run", "nope", "--out", "X"], "no checkpoint found for 'nope'"),
    (["export", "--run", "base", "--step", "3", "--out", "X"], "no checkpoint at step 3"),
    (["export", "--run", "../base", "--out", "X"], "is not a plain name"),
    (["export", "--run", "base"], "--out is required"),
    (["import-hf", "HF", "--run", "base"], "already has a checkpoint"),
    (["import-hf", "X", "--run", "new"], "has no config.json"),
])
def test_bad_input_is_one_line_and_exit_2(home, tmp_path, capsys, argv, message):
    argv = [{"X": str(tmp_path / "out"), "HF": str(home / "hf-base")}.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_a_non_empty_out_is_refused_unless_forced_and_other_files_are_kept(home, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["export", "--run", "base", "--out", str(out)])
    assert "not empty" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["export", "--run", "base", "--out", str(out), "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()


def test_an_architecture_flag_the_export_does_not_know_is_refused(home, tmp_path, capsys):
    checkpoint = run_dir("random") / "checkpoints" / "step_000000"
    flagged = run_dir("flagged") / "checkpoints" / "step_000000"
    flagged.mkdir(parents=True)
    for f in checkpoint.iterdir():
        (flagged / f.name).write_bytes(f.read_bytes())
    meta = json.loads((flagged / "meta.json").read_text())
    meta["model_config"]["attention_kind"] = "mla"
    (flagged / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit):
        main(["export", "--run", "flagged", "--out", str(tmp_path / "out")])
    assert "does not implement: attention_kind" in capsys.readouterr().err


def test_without_the_hf_extra_export_says_how_to_install_it(home, tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "safetensors"
                        else real_find_spec(name, *a))
    with pytest.raises(SystemExit):
        main(["export", "--run", "base", "--out", str(tmp_path / "out")])
    assert "pip install -e '.[hf]'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_exported_weights_are_readable_by_others_like_any_file_written_here(tmp_path):
    """safetensors writes 0600 files; an export is for sharing, so its weights follow the umask."""
    import os
    import stat
    from picochat.export.weights import save_weights
    files = save_weights({"a": torch.ones(300), "b": torch.ones(300)}, tmp_path, torch.float32, max_shard_bytes=1500)
    umask = os.umask(0)
    os.umask(umask)
    assert len(files) == 3  # two shards and the index
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o666 & ~umask}
