"""CORE: prompts, few-shot, scoring, the bundle, errors and download, on hand-made fixtures.

The fakes make every expectation computable by hand: a byte-level tokenizer (id = byte,
BOS = 256) and a bigram model whose logits are 0 except a chosen favourite next byte.
"""
import dataclasses
import functools
import http.server
import json
import math
import threading
import zipfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from picochat.eval.bpb import evaluate_bpb
from picochat.eval.core import centered_score, evaluate_core, evaluate_task, write_core_results
from picochat.eval.core_data import CoreDataError, TaskSpec, load_bundle, load_items
from picochat.eval.core_download import DownloadError, download_with_retry, ensure_bundle
from picochat.eval.core_prompts import (Candidate, common_prefix_length, common_suffix_length, crop_to_context,
                                        prepare_item, render_language_modeling, render_multiple_choice,
                                        sample_fewshot)
from picochat.eval.core_score import count_correct, score_candidates
from picochat.runtime import shutdown_runtime

BOS = 256
VOCAB = 257
FAVOURED = 5.0
SHARED_BUNDLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval" / "core"
MISSING_IN_SHARED = {"hellaswag_zeroshot", "hellaswag", "squad", "coqa"}


class ByteTokenizer:
    bos_id = BOS
    vocab_size = VOCAB

    def encode(self, text, prepend_bos=False):
        return ([BOS] if prepend_bos else []) + list(text.encode("utf-8"))

    def encode_batch(self, texts, prepend_bos=False, num_threads=None):
        return [self.encode(t, prepend_bos) for t in texts]


class BigramModel(torch.nn.Module):
    """logits[t] = table[token t]: each listed byte strongly prefers one next byte."""

    def __init__(self, favourites: dict[str, str] | None = None, table: torch.Tensor | None = None):
        super().__init__()
        if table is None:
            table = torch.zeros(VOCAB, VOCAB)
            for before, after in (favourites or {}).items():
                table[ord(before), ord(after)] = FAVOURED
        self.register_buffer("table", table)

    def forward(self, idx, targets=None, loss_reduction="mean"):
        logits = self.table[idx]
        if targets is None:
            return logits
        nats = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1,
                                                 reduction="none")
        return nats.view(targets.shape)


class BagOfWordsModel(torch.nn.Module):
    """A chance-level stand-in for an untrained model whose guesses vary with the item: the
    logits are a fixed random projection of the running sum of random token embeddings."""

    def __init__(self, seed=0, dim=16):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("embedding", torch.randn(VOCAB, dim, generator=generator))
        self.register_buffer("projection", torch.randn(dim, VOCAB, generator=generator) / dim)

    def forward(self, idx):
        return self.embedding[idx].cumsum(dim=1) @ self.projection


class PrefixSumModel(torch.nn.Module):
    """Causal and position-dependent: logits depend on the sum of all tokens so far."""

    def forward(self, idx):
        running = idx.cumsum(dim=1).float()
        return torch.sin(running.unsqueeze(-1) * torch.arange(1, VOCAB + 1) / 97.0)


FIXTURE_MODEL = {">": "y", " ": "x", "p": " ", ":": " ", "x": "b"}
LOSS_FAVOURED = math.log(math.exp(FAVOURED) + VOCAB - 1) - FAVOURED
LOSS_OTHER = math.log(math.exp(FAVOURED) + VOCAB - 1)

MC_ITEMS = [{"query": "Q", "choices": ["x", "y"], "gold": 1},   # right: y follows '>'
            {"query": "R", "choices": ["y", "x"], "gold": 0},   # right
            {"query": "S", "choices": ["x", "y"], "gold": 0}]   # wrong
SCHEMA_ITEMS = [{"context_options": ["p", "q"], "continuation": "z", "gold": 0},   # right: ' ' follows 'p'
                {"context_options": ["q", "p"], "continuation": "z", "gold": 0},   # wrong
                {"context_options": ["p", "q"], "continuation": "z", "gold": 0}]   # right
LM_ITEMS = [{"context": "Q", "continuation": "xb"},    # right: ':' -> ' ' -> 'x' -> 'b'
            {"context": "Q ", "continuation": "xc"},   # wrong at the last byte
            {"context": "R", "continuation": "xb"}]    # right


def spec(task_type, delimiter=" ", shots=0, baseline=0.5, label="t"):
    return TaskSpec(label, f"{label}.jsonl", task_type, shots, delimiter, baseline)


def accuracy(task, items, model=None, batch_tokens=8192):
    return evaluate_task(model or BigramModel(FIXTURE_MODEL), ByteTokenizer(), task, items, "cpu", None, batch_tokens)


def write_jsonl(path: Path, items):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(it) + "\n" for it in items))


def make_bundle(root: Path) -> Path:
    (root / "core.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "core.yaml").write_text(
        "icl_tasks:\n"
        "- {label: mc_task, dataset_uri: a/mc.jsonl, num_fewshot: [0], icl_task_type: multiple_choice,"
        " continuation_delimiter: '=>'}\n"
        "- {label: schema_task, dataset_uri: a/schema.jsonl, num_fewshot: [0], icl_task_type: schema}\n"
        "- {label: lm_task, dataset_uri: b/lm.jsonl, num_fewshot: [0], icl_task_type: language_modeling,"
        " continuation_delimiter: ': '}\n"
        "- {label: absent_task, dataset_uri: b/absent.jsonl, num_fewshot: [3], icl_task_type: multiple_choice}\n")
    (root / "eval_meta_data.csv").write_text(
        "Eval Task,Task Category,Random baseline\nmc_task,x,50\nschema_task,x,50\nlm_task,x,0\nabsent_task,x,25\n")
    write_jsonl(root / "eval_data/a/mc.jsonl", MC_ITEMS)
    write_jsonl(root / "eval_data/a/schema.jsonl", SCHEMA_ITEMS)
    write_jsonl(root / "eval_data/b/lm.jsonl", LM_ITEMS)
    return root


# --- prompts and few-shot ---------------------------------------------------------------

def test_multiple_choice_prompt_has_fewshot_then_item():
    shot = {"query": "Q1", "choices": ["no", "A1"], "gold": 1}
    assert render_multiple_choice(MC_ITEMS[0], "=>", [shot]) == ["Q1=>A1\n\nQ=>x", "Q1=>A1\n\nQ=>y"]


def test_language_modeling_prompts_trim_contexts_and_strip_the_prompt():
    shot = {"context": " C1 ", "continuation": "k"}
    assert render_language_modeling(LM_ITEMS[1], ": ", [shot]) == ("C1: k\n\nQ:", "C1: k\n\nQ: xc")


def test_fewshot_never_includes_the_item_and_is_deterministic():
    items = [{"id": i} for i in range(12)]
    for index in range(12):
        shots = sample_fewshot(items, index, 5)
        assert len(shots) == 5 and items[index] not in shots
        assert shots == sample_fewshot(items, index, 5)
    assert sample_fewshot(items, 0, 5) != sample_fewshot(items, 1, 5)


def test_fewshot_larger_than_pool_is_capped():
    items = [{"id": i} for i in range(3)]
    assert sorted(s["id"] for s in sample_fewshot(items, 1, 10)) == [0, 2]
    assert accuracy(spec("multiple_choice", "=>", shots=10), MC_ITEMS) >= 0  # scores without crashing


def test_common_prefix_and_suffix():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_suffix_length([[9, 2, 3], [1, 2, 3], [5, 3]]) == 1


def test_crop_keeps_the_end_and_shifts_the_span():
    cropped = crop_to_context(Candidate(list(range(10)), 7, 10), 6)
    assert cropped == Candidate([4, 5, 6, 7, 8, 9], 3, 6)


def test_multiple_choice_scores_only_the_tokens_after_the_shared_prefix():
    item = prepare_item([{"query": "Q", "choices": ["ab", "ac"], "gold": 0}], 0,
                        spec("multiple_choice"), ByteTokenizer(), None)
    assert [(c.start, c.end) for c in item.candidates] == [(4, 5), (4, 5)]  # BOS Q ' ' a | b or c


# --- scoring, by hand -------------------------------------------------------------------

def test_candidate_mean_loss_matches_hand_computation():
    item = prepare_item(MC_ITEMS, 0, spec("multiple_choice", "=>"), ByteTokenizer(), None)
    scores = score_candidates(BigramModel(FIXTURE_MODEL), item.candidates, BOS, "cpu")
    assert scores[0].mean_loss == pytest.approx(LOSS_OTHER, rel=1e-5)
    assert scores[1].mean_loss == pytest.approx(LOSS_FAVOURED, rel=1e-5)


def test_multiple_choice_accuracy_needs_the_task_delimiter():
    assert accuracy(spec("multiple_choice", "=>"), MC_ITEMS) == pytest.approx(2 / 3)
    assert accuracy(spec("multiple_choice", " "), MC_ITEMS) == pytest.approx(1 / 3)


def test_schema_picks_the_context_under_which_the_continuation_is_likeliest():
    assert accuracy(spec("schema"), SCHEMA_ITEMS) == pytest.approx(2 / 3)


def test_language_modeling_needs_every_token_greedy_and_the_delimiter():
    assert accuracy(spec("language_modeling", ": "), LM_ITEMS) == pytest.approx(2 / 3)
    assert accuracy(spec("language_modeling", " "), LM_ITEMS) == 0.0


def test_padding_and_batch_grouping_do_not_change_scores():
    model = PrefixSumModel()
    short = Candidate([BOS, 3, 4, 5], 2, 4)
    long = Candidate([BOS, 9, 8, 7, 6, 5, 4], 3, 7)
    alone = score_candidates(model, [short], BOS, "cpu")[0]
    batched = score_candidates(model, [long, short], BOS, "cpu")[1]
    assert batched.mean_loss == pytest.approx(alone.mean_loss, rel=1e-6)
    items = [prepare_item(MC_ITEMS, i, spec("multiple_choice", "=>"), ByteTokenizer(), None) for i in range(3)]
    assert count_correct(model, items, BOS, "cpu", batch_tokens=1) == count_correct(model, items, BOS, "cpu", 10**6)


def test_centered_score():
    assert centered_score(0.25, 0.25) == 0.0
    assert centered_score(1.0, 0.25) == 1.0
    assert centered_score(0.5, 0.62) == pytest.approx(-0.12 / 0.38)


# --- the bundle ------------------------------------------------------------------------

def test_evaluate_core_on_a_fixture_bundle(tmp_path):
    result = evaluate_core(BigramModel(FIXTURE_MODEL), ByteTokenizer(), make_bundle(tmp_path / "bundle"))
    by_label = {t.label: t for t in result.tasks}
    assert by_label["mc_task"].centered == pytest.approx(1 / 3)
    assert by_label["schema_task"].centered == pytest.approx(1 / 3)
    assert by_label["lm_task"].centered == pytest.approx(2 / 3)
    assert result.core == pytest.approx(4 / 9)
    assert result.missing == ["absent_task"]
    csv_path, json_path = write_core_results(result, tmp_path / "run")
    saved = json.loads(json_path.read_text())
    assert saved["core"] == pytest.approx(4 / 9) and saved["missing"] == ["absent_task"]
    assert csv_path.read_text().splitlines()[-1].startswith("CORE,")


def test_task_selection_and_cap(tmp_path):
    result = evaluate_core(BigramModel(FIXTURE_MODEL), ByteTokenizer(), make_bundle(tmp_path),
                           tasks=["lm_task"], max_per_task=2)
    assert [t.label for t in result.tasks] == ["lm_task"] and result.tasks[0].examples == 2


def test_unknown_task_names_the_known_ones(tmp_path):
    with pytest.raises(CoreDataError, match=r"nope.*mc_task, schema_task, lm_task, absent_task"):
        evaluate_core(BigramModel(), ByteTokenizer(), make_bundle(tmp_path), tasks=["nope"])


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(MC_ITEMS[0]) + "\n{\"query\": oops\n")
    with pytest.raises(CoreDataError, match=r"bad\.jsonl:2: not valid JSON"):
        load_items(path, "multiple_choice")


def test_item_missing_a_field_names_file_and_line(tmp_path):
    path = tmp_path / "lm.jsonl"
    path.write_text(json.dumps({"context": "Q"}) + "\n")
    with pytest.raises(CoreDataError, match=r"lm\.jsonl:1: .*missing continuation"):
        load_items(path, "language_modeling")


def test_bundle_without_core_yaml_names_dir_and_fix(tmp_path):
    with pytest.raises(CoreDataError, match=r"no CORE bundle at .*empty.*--download.*--bundle"):
        load_bundle(tmp_path / "empty")


# --- distributed: items split across ranks, counts summed ------------------------------

BPB_BATCHES = [[[ord("a"), ord("b"), BOS, ord("c")]], [[ord("x"), ord("b"), -1, ord("z"), ord("q")]]]


def bpb_batches(rows):
    targets = torch.tensor(rows)
    return [(targets.clamp(min=0), targets)]


def byte_lengths():
    lengths = torch.arange(VOCAB) % 3 + 1  # uneven, so weighting by bytes matters
    lengths[BOS] = 0
    return lengths


def _rank_results(rank, world, init_file, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    core_accuracy = accuracy(spec("language_modeling", ": "), LM_ITEMS)
    bpb = evaluate_bpb(BigramModel(FIXTURE_MODEL), bpb_batches(BPB_BATCHES[rank]), byte_lengths())
    out[rank] = (core_accuracy, bpb)
    shutdown_runtime()


@pytest.mark.slow
def test_two_ranks_agree_with_one_process(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_rank_results, args=(2, tmp_path / "init", out), nprocs=2)
    both = bpb_batches(BPB_BATCHES[0]) + bpb_batches(BPB_BATCHES[1])
    one_process_bpb = evaluate_bpb(BigramModel(FIXTURE_MODEL), both, byte_lengths())
    assert out[0][0] == out[1][0] == pytest.approx(accuracy(spec("language_modeling", ": "), LM_ITEMS))
    assert out[0][1] == out[1][1] == pytest.approx(one_process_bpb, rel=1e-6)


# --- download --------------------------------------------------------------------------

def zipped_bundle(tmp_path: Path) -> Path:
    source = make_bundle(tmp_path / "src" / "eval_bundle")
    zip_path = tmp_path / "served" / "eval_bundle.zip"
    zip_path.parent.mkdir()
    with zipfile.ZipFile(zip_path, "w") as archive:
        for f in source.rglob("*"):
            archive.write(f, f.relative_to(source.parent))
    return zip_path


def test_ensure_bundle_downloads_from_a_local_server_and_unpacks(tmp_path):
    served = zipped_bundle(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/eval_bundle.zip"
        bundle_dir = ensure_bundle(tmp_path / "home" / "eval_bundle", url=url)
    finally:
        server.shutdown()
    assert [t.label for t in load_bundle(bundle_dir).tasks][0] == "mc_task"
    assert not list((tmp_path / "home").glob("*.zip*"))


def test_download_retries_then_renames(tmp_path):
    attempts = []

    def flaky(url, destination):
        attempts.append(url)
        destination.write_bytes(b"partial")
        if len(attempts) < 3:
            raise ConnectionResetError("reset")
        destination.write_bytes(b"whole")

    target = download_with_retry("http://x/eval_bundle.zip", tmp_path / "b.zip", flaky, backoff_seconds=0)
    assert len(attempts) == 3 and target.read_bytes() == b"whole"
    assert not (tmp_path / "b.zip.part").exists()


def test_download_gives_up_with_a_clear_error(tmp_path):
    def offline(url, destination):
        raise OSError("network unreachable")

    with pytest.raises(DownloadError, match=r"http://x/eval_bundle.zip after 2 attempts"):
        download_with_retry("http://x/eval_bundle.zip", tmp_path / "b.zip", offline, attempts=2, backoff_seconds=0)
    assert not list(tmp_path.iterdir())


# --- the shared copy of the real bundle ------------------------------------------------

needs_shared_bundle = pytest.mark.skipif(not (SHARED_BUNDLE / "core.yaml").is_file(),
                                         reason=f"the shared CORE bundle is not at {SHARED_BUNDLE}")


@needs_shared_bundle
def test_shared_bundle_has_18_loadable_tasks_and_names_4_missing():
    bundle = load_bundle(SHARED_BUNDLE)
    present = [t for t in bundle.tasks if bundle.data_path(t).is_file()]
    assert len(bundle.tasks) == 22 and len(present) == 18
    assert {t.label for t in bundle.tasks} - {t.label for t in present} == MISSING_IN_SHARED
    for task in present:
        items = load_items(bundle.data_path(task), task.task_type)
        assert items and all(prepare_item(items, i, task, ByteTokenizer(), 512).candidates for i in range(3))


@needs_shared_bundle
@pytest.mark.slow
def test_untrained_model_core_is_near_zero_on_shared_bundle():
    result = evaluate_core(BagOfWordsModel(), ByteTokenizer(), SHARED_BUNDLE, max_per_task=100, max_seq_len=128)
    assert len(result.tasks) == 18 and set(result.missing) == MISSING_IN_SHARED
    assert abs(result.core) < 0.02


# --- a real (random-init) GPT and tokenizer, and the CLI --------------------------------

def real_byte_tokenizer():
    from picochat.tokenizer import Tokenizer
    return Tokenizer("bytes", {bytes([i]): i for i in range(256)})


def tiny_gpt(vocab_size, max_seq_len=64):
    from picochat.model.config import GPTConfig
    from picochat.model.gpt import GPT
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=1, vocab_size=vocab_size, aspect_ratio=32, head_dim=16, max_seq_len=max_seq_len,
                          window_pattern="L"))
    model.init_weights()
    return model.eval()


def test_real_gpt_scores_are_independent_of_batching(tmp_path):
    tokenizer = real_byte_tokenizer()
    model = tiny_gpt(tokenizer.vocab_size)
    bundle = make_bundle(tmp_path)
    one_by_one = evaluate_core(model, tokenizer, bundle, batch_tokens=1)
    together = evaluate_core(model, tokenizer, bundle, batch_tokens=10**6)
    assert [t.accuracy for t in one_by_one.tasks] == [t.accuracy for t in together.tasks]
    assert all(0.0 <= t.accuracy <= 1.0 for t in together.tasks) and together.missing == ["absent_task"]


def save_tiny_run(home: Path, name="tiny") -> Path:
    from picochat.checkpoint import run_dir, save_checkpoint
    tokenizer = real_byte_tokenizer()
    tokenizer.save(home / "tokenizers" / tokenizer.name)
    model = tiny_gpt(tokenizer.vocab_size)
    meta = {"model_config": dataclasses.asdict(model.config), "tokenizer": tokenizer.name, "dataset": "fake",
            "run_config": {"dataset": "fake", "device_batch_size": 2}}
    save_checkpoint(run_dir(name), 5, model.state_dict(), {}, meta)
    return run_dir(name)


def test_cli_core_writes_results_and_prints_json(tmp_path, monkeypatch, capsys):
    from picochat.cli import main
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path / "home"))
    run = save_tiny_run(tmp_path / "home")
    bundle = make_bundle(tmp_path / "bundle")
    main(["eval", "core", "--run", "tiny", "--bundle", str(bundle), "--json", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"tasks", "core", "missing"} and printed["missing"] == ["absent_task"]
    assert set(printed["tasks"]) == {"mc_task", "schema_task", "lm_task"}
    assert json.loads((run / "core.json").read_text())["core"] == pytest.approx(printed["core"])
    assert (run / "core.csv").is_file()


def test_cli_core_refuses_a_bundle_without_core_yaml(tmp_path, monkeypatch, capsys):
    from picochat.cli import main
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path / "home"))
    save_tiny_run(tmp_path / "home")
    with pytest.raises(SystemExit):
        main(["eval", "core", "--run", "tiny", "--bundle", str(tmp_path / "nothing"), "--device", "cpu"])
    assert "no CORE bundle at" in capsys.readouterr().err


class InMemoryDataset:
    name = "fake"

    def row_group_counts(self, split):
        return [2]

    def row_group_sizes(self, split):
        return [[20, 20]]

    def read_row_group(self, split, shard_index, row_group_index):
        return [f"document {row_group_index} {i} " * (3 + i) for i in range(20)]

    def iter_documents(self, split):
        for row_group_index in range(2):
            yield from self.read_row_group(split, 0, row_group_index)


def test_cli_bpb_prints_json(tmp_path, monkeypatch, capsys):
    from picochat.cli import main
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path / "home"))
    save_tiny_run(tmp_path / "home")
    monkeypatch.setattr("picochat.eval.cli.open_dataset", lambda name: InMemoryDataset())
    main(["eval", "bpb", "--run", "tiny", "--tokens", "256", "--json", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["split"] == "val" and printed["tokens"] == 2 * 64 * 2
    assert 4.0 < printed["bpb"] < 12.0  # near log2(265) = 8.05 for an untrained byte-level model


@needs_shared_bundle
@pytest.mark.slow
def test_untrained_real_gpt_scores_all_present_shared_tasks():
    tokenizer = real_byte_tokenizer()
    result = evaluate_core(tiny_gpt(tokenizer.vocab_size, max_seq_len=64), tokenizer, SHARED_BUNDLE, max_per_task=6)
    assert len(result.tasks) == 18 and set(result.missing) == MISSING_IN_SHARED
    assert all(t.examples == 6 and 0.0 <= t.accuracy <= 1.0 for t in result.tasks)
    assert abs(result.core) < 0.15  # chance level; 6 items per task leave a wide noise band
