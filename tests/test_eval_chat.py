"""The chat evals: letters' logits for categorical tasks, sampling and pass@k for generative ones, the CLI."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from infer_helpers import tiny_model, tiny_tokenizer
from picochat.eval.chat import (ChatResult, centered_accuracy, chatcore, evaluate_categorical,
                                evaluate_generative, letter_token_ids)
from picochat.infer.engine import Completion, Engine, SamplingParams
from picochat.tasks import get_task, prompt_conversation
from picochat.tasks.base import answer_text, multiple_choice_item
from picochat.tokenizer.chat import render_for_completion
from picochat.runtime import shutdown_runtime

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


class LetterPreferringModel(torch.nn.Module):
    """Logits that rank the given letters' tokens first, in order, at every position."""

    def __init__(self, tok, preference: str, vocab_size: int, max_seq_len: int = 512):
        super().__init__()
        self.config = type("Config", (), {"max_seq_len": max_seq_len})()
        self.bias = torch.zeros(vocab_size)
        for rank, letter in enumerate(preference):
            self.bias[tok.encode(letter)[0]] = 10.0 - rank
        self.calls = 0

    def forward(self, idx):
        self.calls += 1
        return self.bias.expand(*idx.shape, -1).clone()


def mc_items():
    """Mixed answers, 3 to 5 choices; question lengths vary so batches need padding."""
    answers = "BACBDBEAB"
    return [multiple_choice_item("why? " * (i + 1), [f"c{j}" for j in range(max(3, "ABCDE".index(a) + 1))], a,
                                 with_answer=False) for i, a in enumerate(answers)]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_always_b_scores_the_fraction_of_b_answers(tok, batch_size):
    items = mc_items()
    model = LetterPreferringModel(tok, "B", tok.vocab_size)
    result = evaluate_categorical(model, tok, get_task("arc-easy"), items, batch_size=batch_size)
    assert result.correct == sum(item["answer"] == "B" for item in items) and result.total == len(items)
    assert model.calls == -(-len(items) // batch_size)


def test_letters_are_restricted_to_the_items_choices(tok):
    items = mc_items()  # E ranks first but only the 5-choice item offers it; elsewhere B wins
    model = LetterPreferringModel(tok, "EB", tok.vocab_size)
    result = evaluate_categorical(model, tok, get_task("arc-easy"), items)
    expected = sum(item["answer"] == ("E" if "E" in item["letters"] else "B") for item in items)
    assert result.correct == expected


@pytest.mark.skipif(not (SHARED / "mmlu").is_dir(), reason=f"the shared eval data is absent ({SHARED})")
def test_always_b_on_real_mmlu_items(tok):
    items = get_task("mmlu", SHARED).load("dev")
    result = evaluate_categorical(LetterPreferringModel(tok, "B", tok.vocab_size), tok, get_task("mmlu"), items, 16)
    assert result.accuracy == pytest.approx(sum(i["answer"] == "B" for i in items) / len(items))


def test_letter_tokens_are_single_tokens(tok):
    assert len(set(letter_token_ids(tok, ("A", "B", "C", "D")))) == 4


class ScriptedEngine:
    """An engine whose samples write given texts (sample r of every item writes texts[r])."""

    def __init__(self, tok, texts):
        self.tokenizer, self.texts, self.device, self.prompts = tok, texts, torch.device("cpu"), []

    def generate_completions(self, prompt, params):
        self.prompts.append(prompt)
        return [Completion(self.tokenizer.encode(self.texts[r]), "stop") for r in range(params.num_samples)]


def test_generative_scores_and_pass_at_k(tok):
    task = get_task("gsm8k")
    items = [{"messages": [{"role": "user", "content": "q"}], "answer": a} for a in ("7", "9", "12")]
    engine = ScriptedEngine(tok, ["so #### 9", "it is 7"])
    one = evaluate_generative(engine, task, items, num_samples=1)
    assert (one.correct, one.total) == (1, 3)
    two = evaluate_generative(engine, task, items, num_samples=2, temperature=1.0)
    assert (two.correct, two.sample_correct) == (2, 2) and two.to_dict()["pass@1"] == pytest.approx(2 / 6)
    assert engine.prompts[0][-1] == tok.special_id("<|assistant_start|>")


def test_generative_eval_with_a_tiny_real_gpt_end_to_end(tok):
    task = get_task("spelling")
    items = task.load()[:2]
    engine = Engine(tiny_model(tok.vocab_size, max_seq_len=64), tok)
    result = evaluate_generative(engine, task, items, max_tokens=8)
    greedy = [engine.generate_completions(render_for_completion(tok, prompt_conversation(item)),
                                          SamplingParams(max_tokens=8, temperature=0.0))[0] for item in items]
    expected = sum(task.score(item, answer_text(tok, c.tokens)) for item, c in zip(items, greedy))
    assert (result.total, result.too_long, result.correct) == (2, 0, expected)


GENERATIVE_ITEMS = [{"messages": [{"role": "user", "content": "q"}], "answer": a} for a in ("7", "9", "7", "5", "7")]


def both_evaluations(tok):
    categorical = evaluate_categorical(LetterPreferringModel(tok, "B", tok.vocab_size), tok, get_task("mmlu"),
                                       mc_items(), batch_size=2)
    generative = evaluate_generative(ScriptedEngine(tok, ["#### 7"]), get_task("gsm8k"), GENERATIVE_ITEMS)
    return categorical, generative


def _rank_results(rank, world, init_file, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    out[rank] = both_evaluations(tiny_tokenizer())
    shutdown_runtime()


@pytest.mark.slow
def test_two_ranks_split_the_items_and_agree_with_one_process(tok, tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_rank_results, args=(2, tmp_path / "init", out), nprocs=2)
    assert out[0] == out[1] == both_evaluations(tok)
    assert out[0][1].correct == 3 and out[0][0].total == len(mc_items())


def test_centering_and_chatcore():
    assert centered_accuracy(0.25, 0.25) == 0 and centered_accuracy(1.0, 0.25) == 1
    results = [ChatResult("arc-easy", 50, 100, 0.25), ChatResult("gsm8k", 1, 10, 0.0)]
    assert chatcore(results) == pytest.approx(((0.5 - 0.25) / 0.75 + 0.1) / 2)


def save_tiny_run(tok, home: Path, name="tiny") -> Path:
    from picochat.checkpoint import run_dir, save_checkpoint
    tok.save(home / "tokenizers" / tok.name)
    model = tiny_model(tok.vocab_size, max_seq_len=256)
    save_checkpoint(run_dir(name), 3, model.state_dict(), {},
                    {"model_config": dataclasses.asdict(model.config), "tokenizer": tok.name})
    return run_dir(name)


@pytest.mark.slow
def test_cli_runs_tasks_prints_json_and_merges_results(tok, home, tmp_path, capsys):
    from picochat.cli import main
    run = save_tiny_run(tok, home)
    data = tmp_path / "data"
    (data / "mmlu" / "test").mkdir(parents=True)
    (data / "mmlu" / "test" / "x_test.csv").write_text("".join(f"q{i},a,b,c,d,{'ABCD'[i % 4]}\n" for i in range(6)))
    main(["eval", "chat", "--run", "tiny", "--task", "mmlu", "--data-dir", str(data), "--json", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["tasks"]["mmlu"]["total"] == 6
    assert printed["chatcore"] == pytest.approx((printed["tasks"]["mmlu"]["accuracy"] - 0.25) / 0.75)
    main(["eval", "chat", "--run", "tiny", "--task", "spelling", "--max-problems", "2", "--max-tokens", "4",
          "--device", "cpu"])
    assert "ChatCORE over 1 task(s)" in capsys.readouterr().out
    saved = json.loads((run / "chat_eval.json").read_text())
    assert sorted(saved["tasks"]) == ["mmlu", "spelling"] and saved["tasks"]["spelling"]["total"] == 2
    assert saved["tasks"]["mmlu"]["step"] == 3


def test_cli_errors_name_the_task_list_and_the_missing_path(tok, home, tmp_path, capsys):
    from picochat.cli import main
    save_tiny_run(tok, home)
    with pytest.raises(SystemExit) as exited:
        main(["eval", "chat", "--run", "tiny", "--task", "trivia", "--device", "cpu"])
    assert exited.value.code == 2 and "unknown task 'trivia'; the tasks are arc-easy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "chat", "--run", "tiny", "--task", "gsm8k", "--data-dir", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gsm8k' / 'test.jsonl'} is missing" in err and "--download" in err
    with pytest.raises(SystemExit):
        main(["eval", "chat", "--run", "tiny", "--task", "gsm8k", "--num-samples", "4", "--device", "cpu"])
    assert "--temperature 0 gives identical samples" in capsys.readouterr().err
