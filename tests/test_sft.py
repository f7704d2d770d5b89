"""SFT: the loss mask, padded best-fit packing, sources' bad input, a finetune that learns, the offline mixture."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from picochat.checkpoint import CheckpointError, load_model_from_run
from picochat.infer.engine import Engine, SamplingParams
from picochat.post.mixture import SourceError
from picochat.post.packing import IGNORE, pack_rows, row_to_example
from picochat.post.config import SFTConfig
from picochat.post.sft import sft
from picochat.post.sources import SourceContext, load_source
from picochat.runtime import init_runtime
from picochat.tokenizer import Tokenizer
from picochat.tokenizer.chat import render_conversation, render_for_completion
from post_helpers import (base_home, losses, pseudo_words, run_killed_at,  # noqa: F401  (base_home: a fixture)
                          spelling_conversation, write_jsonl)

SHARED_EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"


# --- the mask and the packing -----------------------------------------------------------------

def test_mask_covers_exactly_what_the_assistant_writes(base_home):
    tok = Tokenizer.load("tiny")
    conversation = {"messages": [
        {"role": "user", "content": "What is 12 * 7?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me compute "},
                                          {"type": "python", "text": "12 * 7"},
                                          {"type": "python_output", "text": "84"},
                                          {"type": "text", "text": "It is 84."}]}]}
    ids, mask = render_conversation(tok, conversation)
    special = tok.special_id
    written = ([*tok.encode("Let me compute "), special("<|python_start|>"), *tok.encode("12 * 7"),
                special("<|python_end|>")], [*tok.encode("It is 84."), special("<|assistant_end|>")])
    tool_output = [special("<|output_start|>"), *tok.encode("84"), special("<|output_end|>")]
    expected_ids = [tok.bos_id, special("<|user_start|>"), *tok.encode("What is 12 * 7?"), special("<|user_end|>"),
                    special("<|assistant_start|>"), *written[0], *tool_output, *written[1]]
    expected_mask = [0] * (4 + len(tok.encode("What is 12 * 7?"))) + [1] * len(written[0]) \
        + [0] * len(tool_output) + [1] * len(written[1])
    assert ids == expected_ids and mask == expected_mask
    _, targets = row_to_example(ids, mask)
    assert [t for t in targets.tolist() if t != IGNORE] == [i for i, m in zip(ids, mask) if m]


def test_packing_is_bos_aligned_padded_and_loses_no_token():
    docs = [([0] + [5] * n, [0] + [1] * n) for n in (3, 9, 4, 7, 2, 6, 1, 8)]
    rows = list(pack_rows(docs, row_len=12, buffer_size=4, pad_id=0))
    assert all(len(ids) == 12 == len(mask) and ids[0] == 0 for ids, mask in rows)
    assert sum(sum(mask) for _, mask in rows) == sum(sum(m) for _, m in docs)  # nothing cropped
    assert sum(ids.count(5) for ids, _ in rows) == sum(len(d) - 1 for d, _ in docs)


def test_a_conversation_longer_than_a_row_is_cut_to_the_row():
    rows = list(pack_rows([([0] + [5] * 20, [0] + [1] * 20)], row_len=8))
    assert rows == [([0] + [5] * 7, [0] + [1] * 7)]


# --- bad input --------------------------------------------------------------------------------

def test_malformed_local_jsonl_names_the_file_and_line(tmp_path):
    good = json.dumps(spelling_conversation("bako"))
    bad = json.dumps({"messages": [{"role": "assistant", "content": "hi"}]})
    path = tmp_path / "mine.jsonl"
    path.write_text(good + "\n" + bad + "\n")
    with pytest.raises(SourceError, match=r"mine.jsonl, line 2: .*role 'assistant' where 'user'"):
        load_source("jsonl", {"path": str(path)}, SourceContext())
    path.write_text(good + "\n{not json\n")
    with pytest.raises(SourceError, match=r"mine.jsonl, line 2"):
        load_source("jsonl", {"path": str(path)}, SourceContext())


def test_gsm8k_source_renders_the_calculator_annotations(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    row = {"question": "Q?", "answer": "Half is 48/2 = <<48/2=24>>24 clips.\n#### 24"}
    (tmp_path / "gsm8k" / "train.jsonl").write_text(json.dumps(row) + "\n")
    [conversation] = load_source("gsm8k-train", {}, SourceContext(data_dir=tmp_path))
    parts = conversation["messages"][1]["content"]
    assert parts[:3] == [{"type": "text", "text": "Half is 48/2 = "}, {"type": "python", "text": "48/2"},
                         {"type": "python_output", "text": "24"}]
    assert parts[-1]["text"].endswith("#### 24")


def test_a_base_run_that_does_not_exist_is_refused(base_home):
    with pytest.raises(CheckpointError, match="no checkpoint found for 'missing'"):
        sft(SFTConfig(from_run="missing", mixture="offline", device="cpu"))


def test_an_unknown_mixture_is_refused(base_home):
    with pytest.raises(SourceError, match="--mixture 'nope' is neither a built-in mixture"):
        sft(SFTConfig(from_run="base", mixture="nope", device="cpu"))


# --- finetuning learns ------------------------------------------------------------------------

def spelling_accuracy(run: str, words: list[str]) -> float:
    model, tok, _ = load_model_from_run(run, init_runtime("cpu"))
    engine, correct = Engine(model, tok), 0
    for word in words:
        prompt = render_for_completion(tok, {"messages": spelling_conversation(word)["messages"][:1]})
        [completion] = engine.generate_completions(prompt, SamplingParams(max_tokens=16, temperature=0))
        correct += tok.decode(completion.tokens).strip() == "-".join(word)
    return correct / len(words)


@pytest.mark.slow
def test_sft_on_spelling_beats_the_base_model_on_held_out_words(base_home, tmp_path):
    torch.set_num_threads(2)
    data = write_jsonl(tmp_path / "spell.jsonl", [spelling_conversation(w) for w in pseudo_words(4000, 1)])
    mixture = tmp_path / "spell.yaml"
    mixture.write_text(f"name: spell\nsources:\n  - {{source: jsonl, args: {{path: '{data}'}}}}\n")
    held_out = [w for w in pseudo_words(40, 12345) if w not in set(pseudo_words(4000, 1))]
    before = spelling_accuracy("base", held_out)
    result = sft(SFTConfig(from_run="base", run="spell-sft", mixture=str(mixture), num_iterations=100,
                           max_seq_len=32, device_batch_size=8, total_batch_size=256, lr_scale=1.0,
                           val_conversations=50, eval_every=0, chat_eval=False, device="cpu"))
    after = spelling_accuracy("spell-sft", held_out)
    assert after >= before + 0.15, (before, after)
    assert result["step"] == 100 and result["val_bpb"] is not None
    records = [json.loads(line) for line in (base_home / "runs" / "spell-sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 100 and records[-1]["loss"] < records[0]["loss"]


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_EVAL / "gsm8k" / "train.jsonl").is_file(), reason="../shared/data/eval is absent")
def test_offline_mixture_runs_from_local_gsm8k_and_arc(base_home):
    result = sft(SFTConfig(from_run="base", run="offline-sft", mixture="offline", data_dir=str(SHARED_EVAL),
                           num_iterations=3, device_batch_size=2, total_batch_size=128, val_conversations=20,
                           chat_eval=False, device="cpu"))
    model, tok, meta = load_model_from_run("offline-sft", init_runtime("cpu"))  # what chat/serve load
    assert result["step"] == 3 and meta["stage"] == "sft" and meta["from_run"].endswith("step_000000")


# --- the one loop: resume after SIGKILL, 2 processes = 1 with accumulation, precision ----------

def spelling_mixture(directory: Path, count: int = 400) -> Path:
    data = write_jsonl(directory / "spell.jsonl", [spelling_conversation(w) for w in pseudo_words(count, 3)])
    mixture = directory / "spell.yaml"
    mixture.write_text(f"name: spell\nsources:\n  - {{source: jsonl, args: {{path: '{data}'}}}}\n")
    return mixture


def short_sft_args(mixture: Path, run: str) -> list[str]:
    return ["sft", "--from", "base", "--run", run, "--mixture", str(mixture), "--num-iterations", "5",
            "--max-seq-len", "32", "--device-batch-size", "4", "--total-batch-size", "256", "--lr-scale", "1.0",
            "--val-conversations", "0", "--no-chat-eval", "--save-every", "2", "--device", "cpu",
            "--dtype", "float32"]


@pytest.mark.slow
def test_sft_killed_mid_run_resumes_to_the_same_losses(base_home, tmp_path):
    mixture = spelling_mixture(tmp_path)
    from picochat.cli import main
    assert main(short_sft_args(mixture, "sft-whole")) == 0
    killed = run_killed_at(3, base_home, short_sft_args(mixture, "sft-killed"))
    assert killed.returncode == -9 and len(losses(base_home, "sft-killed")) == 2, killed.stderr[-2000:]  # died in step 3
    assert main(["sft", "--run", "sft-killed", "--resume"]) == 0  # from step 2's checkpoint
    assert losses(base_home, "sft-killed") == losses(base_home, "sft-whole")  # exact: fp32 on CPU


def _sft_rank(rank: int, port: int, home: str, mixture: str) -> None:
    os.environ.update(PICOCHAT_HOME=home, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from picochat.cli import main
    main(short_sft_args(Path(mixture), "sft-two")[:-6] + ["--device", "cpu", "--dtype", "float32"])


@pytest.mark.slow
def test_two_gloo_processes_of_sft_match_one_with_accumulation(base_home, tmp_path):
    import socket

    import torch.multiprocessing as mp
    mixture = spelling_mixture(tmp_path)
    from picochat.cli import main
    assert main(short_sft_args(mixture, "sft-one")[:-6] + ["--device", "cpu", "--dtype", "float32"]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sft_rank, args=(port, str(base_home), str(mixture)), nprocs=2, join=True)
    one, two = losses(base_home, "sft-one"), losses(base_home, "sft-two")
    assert len(one) == 5 and one[0] != one[-1]
    assert two[0] == pytest.approx(one[0], rel=1e-6)  # the same rows in the same micro-batches
    assert two == pytest.approx(one, rel=1e-3)  # Muon amplifies fp32 summation-order noise a little


@pytest.mark.slow
def test_sft_dtype_is_set_before_the_model_is_built(base_home, tmp_path, monkeypatch):
    from picochat.post import base as post_base
    built = []

    def spy(config, runtime):
        built.append(runtime.dtype)
        return real(config, runtime)
    real = post_base.build_model
    monkeypatch.setattr(post_base, "build_model", spy)
    result = sft(SFTConfig(from_run="base", run="sft-fp16", mixture=str(spelling_mixture(tmp_path, 50)),
                           num_iterations=1, max_seq_len=32, device_batch_size=4, total_batch_size=128,
                           val_conversations=0, chat_eval=False, device="cpu", dtype="float16"))
    assert built == [torch.float16] and result["step"] == 1
    model, _, meta = load_model_from_run("sft-fp16", init_runtime("cpu"))
    assert meta["run_config"]["dtype"] == "float16" and meta["dataset"] == "none" and meta["tokenizer"] == "tiny"


@pytest.mark.slow
def test_eval_bpb_scores_a_post_trained_run_on_a_named_dataset(base_home, tmp_path, capsys):
    from picochat.cli import main
    from picochat.data.importer import ImportConfig, import_dataset
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"Spell the word: {w} " + "-".join(w)}
                                                 for w in pseudo_words(60, 7)])
    import_dataset([docs], "spelled", ImportConfig(format="jsonl", val_fraction=0.5, docs_per_row_group=8))
    assert main(short_sft_args(spelling_mixture(tmp_path, 50), "sft-bpb")[:-6] + ["--num-iterations", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "bpb", "--run", "sft-bpb", "--dataset", "spelled", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dataset"] == "spelled" and result["whole_split"] and 0 < result["bpb"] < 20
    assert 0 < result["tokens"] < 2**20  # the small val split once, not cycled to fill the budget
