"""The inference engine: KV-cache decoding, parallel samples, sampling filters, tool use, streaming text."""
import dataclasses
import io

import pytest
import torch

from infer_helpers import tiny_model, tiny_tokenizer
from picochat.checkpoint import run_dir, save_checkpoint
from picochat.hardware import cpu_has_native_bf16
from picochat.cli import main
from picochat.infer.chat_cli import ChatConfig, chat_loop, run_chat
from picochat.infer.engine import Batch, Engine, PromptTooLongError, SamplingParams, StreamDecoder
from picochat.infer.sampling import ARGMAX_BLOCK, filtered_probs, greedy_tokens, sample_rows
from picochat.model.gpt import GPT
from picochat.model.kv_cache import KVCache


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def engine(tok):
    return Engine(tiny_model(tok.vocab_size, max_seq_len=64, window_pattern="SL"), tok)


def prompt_ids(tok, length: int) -> list[int]:
    ids = tok.encode("The quick brown fox jumps over the lazy dog. What is 12 times 7? " * 8)
    return [tok.bos_id, *ids[:length - 1]]


@torch.no_grad()
def full_recompute_greedy(model, prompt: list[int], num_tokens: int) -> list[int]:
    idx = torch.tensor([prompt])
    for _ in range(num_tokens):
        idx = torch.cat((idx, model(idx)[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx[0, len(prompt):].tolist()


def test_greedy_with_kv_cache_equals_full_recomputation_past_the_sliding_window(engine, tok):
    window = engine.model.config.window_sizes()[0]
    prompt = prompt_ids(tok, window + 8)  # the S layer's window is shorter than the prompt
    tokens = next(iter(engine.generate_completions(prompt, SamplingParams(max_tokens=20, temperature=0)))).tokens
    expected = full_recompute_greedy(engine.model, prompt, len(tokens))
    assert len(tokens) >= 10, "the random model stopped too early for the comparison to mean much"
    assert tokens == expected


def test_parallel_samples_equal_separate_runs_with_the_same_seeds(engine, tok):
    prompt = prompt_ids(tok, 12)
    batch = engine.generate_completions(prompt, SamplingParams(max_tokens=16, temperature=1.0, top_k=50,
                                                               seed=7, num_samples=3))
    singles = [engine.generate_completions(prompt, SamplingParams(max_tokens=16, temperature=1.0, top_k=50,
                                                                  seed=7 + row))[0] for row in range(3)]
    assert [c.tokens for c in batch] == [c.tokens for c in singles]
    assert len({tuple(c.tokens) for c in batch}) > 1, "different seeds should give different samples"


def test_same_seed_reproduces_and_stream_matches_completions(engine, tok):
    prompt, params = prompt_ids(tok, 10), SamplingParams(max_tokens=12, temperature=0.8, seed=3, num_samples=2)
    streamed = [[], []]
    for step in engine.generate(prompt, params):
        for row, token in enumerate(step):
            if token is not None:
                streamed[row].append(token)
    completions = engine.generate_completions(prompt, params)
    for row, completion in zip(streamed, completions):
        assert row[:len(completion.tokens)] == completion.tokens
        assert completion.finish_reason in ("stop", "length")
        assert len(completion.tokens) <= params.max_tokens


def test_length_limit_and_context_limit(engine, tok):
    [completion] = engine.generate_completions(prompt_ids(tok, 8), SamplingParams(max_tokens=3, temperature=0))
    assert len(completion.tokens) <= 3
    context = engine.context_length
    assert engine.reply_budget(context - 5, 100) == 5
    with pytest.raises(PromptTooLongError, match="context"):
        engine.reply_budget(context, 10)


class ScriptedModel(torch.nn.Module):
    """Stands in for the GPT: its logits make each row write a fixed script, then whatever it is fed back."""

    def __init__(self, real, script: list[int]):
        super().__init__()
        self.real, self.script, self.config, self.compute_dtype = real, script, real.config, real.compute_dtype
        self.fed: list[int] = []  # the token fed at each decode step
        self.calls = 0

    # logits read at -1: padding repeats a prompt's last token; `capped` changes nothing (they are 0s and a 1)
    def forward(self, idx, kv_cache=None, last_only=False, row_lengths=None, capped=True):
        self.real(idx, kv_cache=kv_cache, row_lengths=row_lengths)  # keeps the cache's positions honest
        if self.calls:
            self.fed.append(int(idx[0, -1]))
        logits = torch.zeros(idx.size(0), idx.size(1), self.config.vocab_size)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return logits


def test_tool_use_injects_the_calculator_result(tok):
    special = tok.special_id
    script = [special("<|python_start|>"), *tok.encode("12*7"), special("<|python_end|>")]
    script += [special("<|assistant_end|>")] * 20
    model = ScriptedModel(tiny_model(tok.vocab_size), script)
    engine = Engine(model, tok)
    [completion] = engine.generate_completions(prompt_ids(tok, 6), SamplingParams(max_tokens=30, temperature=0))
    expected_output = [special("<|output_start|>"), *tok.encode("84"), special("<|output_end|>")]
    assert completion.tokens[:len(script) - 20] == script[:-20]
    assert completion.tokens[len(script) - 20:] == expected_output
    assert completion.finish_reason == "stop"
    assert model.fed[-len(expected_output):] == expected_output  # the forced tokens were fed to the model


@pytest.mark.parametrize("stop", ["<|assistant_end|>", "<|bos|>"])
def test_stops_on_assistant_end_or_bos(tok, stop):
    words = tok.encode("Hello there")
    script = [*words, tok.special_id(stop), *tok.encode("never written")]
    engine = Engine(ScriptedModel(tiny_model(tok.vocab_size), script), tok)
    [completion] = engine.generate_completions(prompt_ids(tok, 6), SamplingParams(max_tokens=30, temperature=0))
    assert completion.tokens == words and completion.finish_reason == "stop"


def test_filtered_probs_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top2 = filtered_probs(logits, 1.0, top_k=2)
    assert torch.allclose(top2, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    nucleus = filtered_probs(logits, 1.0, top_p=0.7)  # 0.5 + 0.3 reaches 0.7
    assert torch.allclose(nucleus, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert filtered_probs(logits, 1.0, top_p=0.1)[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert filtered_probs(logits, 1.0, top_p=0.0)[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert sample_rows(logits.repeat(2, 1), [None, None], [0, 1], temperature=0) == {0: 0, 1: 0}


@pytest.mark.parametrize("vocab", [3 * ARGMAX_BLOCK, 3 * ARGMAX_BLOCK + 37, ARGMAX_BLOCK - 1])
def test_greedy_tokens_equal_argmax_in_both_layouts_and_on_ties(vocab):
    generator = torch.Generator().manual_seed(vocab)
    rows = torch.randn(9, vocab, generator=generator)
    top = rows.amax(dim=-1)
    rows[1, [5, vocab - 1]] = top[1] + 1  # a tie across blocks: the first wins
    rows[2, [vocab - 2, vocab - 1]] = top[2] + 1  # a tie inside the last (maybe partial) block
    rows[3, [40, 7]] = top[3] + 1  # a tie inside the first block
    rows[4] = float("-inf")
    rows[5, vocab // 2] = float("nan")  # torch's argmax takes a NaN for the maximum
    rows[6, vocab - 1] = top[6] + 1  # the maximum is the vocabulary's last logit
    for logits in (rows, rows.t().contiguous().t()):  # row-major, and column-major as the CPU head makes them
        assert greedy_tokens(logits).tolist() == torch.argmax(logits, dim=-1).tolist()
    assert greedy_tokens(rows)[[1, 2, 3, 5, 6]].tolist() == [5, vocab - 2, 7, vocab // 2, vocab - 1]


def test_stream_decoder_holds_back_incomplete_utf8(tok):
    ids = tok.encode("héllo wörld ✓")
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(token) for token in ids] + [decoder.flush()]
    assert "".join(pieces) == "héllo wörld ✓"
    assert not any("\ufffd" in piece for piece in pieces)


def test_chat_loop_keeps_history_and_obeys_clear_and_quit(engine, tok):
    lines = iter(["Hello there", "How are you?", "/clear", "Hi", "/quit", "never read"])
    out = io.StringIO()
    prompts = []
    generate = engine.generate

    def recording_generate(prompt, params):
        prompts.append(prompt)
        return generate(prompt, params)

    engine.generate = recording_generate
    try:
        chat_loop(engine, ChatConfig(run="tiny", max_tokens=5, temperature=0), read=lambda _: next(lines), out=out)
    finally:
        del engine.generate
    user_starts = [p.count(tok.special_id("<|user_start|>")) for p in prompts]
    assert user_starts == [1, 2, 1]  # the second turn carries the first; /clear starts over
    assert out.getvalue().count("picochat> ") == 3 and "(new conversation)" in out.getvalue()


def test_chat_command_one_shot_loads_a_saved_run(tok, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PICOCHAT_HOME", str(tmp_path))
    tok.save(tmp_path / "tokenizers" / "tiny-chat")
    model = tiny_model(tok.vocab_size)
    meta = {"model_config": dataclasses.asdict(model.config), "tokenizer": "tiny-chat"}
    save_checkpoint(run_dir("tiny-run"), 1, model.state_dict(), {}, meta)
    assert main(["chat", "--run", "tiny-run", "-p", "Hello", "--max-tokens", "6", "--temperature", "0",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit) as exited:
        main(["chat", "--run", "no-such-run", "-p", "Hello", "--device", "cpu"])
    assert exited.value.code == 2 and "no-such-run" in capsys.readouterr().err


# --- continuous batching: a request decodes the same in company as alone ---------------------------------

def decode_alone(engine, prompt, params) -> list[list[int]]:
    rows = [[] for _ in range(params.num_samples)]
    for step in engine.generate(prompt, params):
        for row, token in zip(rows, step):
            if token is not None:
                row.append(token)
    return rows


def decode_together(engine, jobs: list[tuple[list[int], SamplingParams, int]], max_rows: int) -> list[list[list[int]]]:
    """Each job (prompt, params, the step at which it joins) decoded in one shared batch."""
    batch = Batch(engine, max_rows, engine.context_length)
    outputs, handles, step = [None] * len(jobs), {}, 0
    def record(new: list) -> None:
        for request, tokens in new:
            for row, token in zip(outputs[handles[request]], tokens):
                if token is not None:
                    row.append(token)

    while len(handles) < len(jobs) or batch.slots:
        arriving = [j for j, (_, _, joins_at) in enumerate(jobs) if joins_at == step]
        if arriving:  # prefilled together in one forward, as the server's scheduler does
            first = batch.add_together([(jobs[j][0], jobs[j][1]) for j in arriving])
            for j, (request, _) in zip(arriving, first):
                handles[request] = j
                outputs[j] = [[] for _ in range(jobs[j][1].num_samples)]
            record(first)
        record(batch.step())
        step += 1
    return outputs


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def serving_engine(request, tok, engine):
    """The engine in each dtype `picochat serve` runs on a CPU: fp32, or bf16 where the CPU multiplies it natively."""
    if request.param == "float32":
        return engine
    if not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 or AMX), so its server decodes in fp32")
    return Engine(tiny_model(tok.vocab_size, max_seq_len=64, window_pattern="SL", dtype=torch.bfloat16), tok)


def test_requests_decoded_together_equal_each_decoded_alone(serving_engine, tok):
    """Different prompt lengths (one past the S layer's 32-token window), greedy and seeded sampling with
    different filters, n = 2, joining at different steps and leaving at different lengths."""
    engine = serving_engine
    jobs = [
        (prompt_ids(tok, 5), SamplingParams(max_tokens=20, temperature=0), 0),
        (prompt_ids(tok, 40), SamplingParams(max_tokens=12, temperature=1.0, top_k=20, seed=5, num_samples=2), 0),
        (prompt_ids(tok, 17), SamplingParams(max_tokens=6, temperature=0.7, top_p=0.9, seed=9), 3),
        (prompt_ids(tok, 9), SamplingParams(max_tokens=15, temperature=1.3, seed=11), 7),
        (prompt_ids(tok, 33), SamplingParams(max_tokens=10, temperature=0), 8),
        (prompt_ids(tok, 17)[::-1], SamplingParams(max_tokens=9, temperature=0), 3),  # with the 17 above
        (prompt_ids(tok, 5)[::-1], SamplingParams(max_tokens=8, temperature=0.9, seed=3), 0),  # and with the 5
    ]
    together = decode_together(engine, jobs, max_rows=8)
    alone = [decode_alone(engine, prompt, params) for prompt, params, _ in jobs]
    assert together == alone
    assert sum(len(row) for rows in alone for row in rows) > 40, "the rows stopped too early to mean much"


def test_a_ragged_forward_matches_each_row_alone_in_fp32(engine, tok):
    """What holds below the tokens: rows at different positions, decoded in one forward, give each row's
    logits to within 1e-4 of that row decoded alone (a batched matmul may sum in another order, so the
    low bits may differ; the token-level test above shows they do not change a token on these cases)."""
    model, lengths = engine.model, [3, 41, 20]
    cache = KVCache(model.config, 3, 64)
    alone = []
    with torch.no_grad():
        for row, length in enumerate(lengths):
            prompt = prompt_ids(tok, length)
            _, prefill = engine.prefill(prompt)
            cache.insert(prefill, [row])
            single = KVCache(model.config, 1, 64)
            single.insert(prefill, [0])
            alone.append(model(torch.tensor([[prompt[-1]]]), kv_cache=single)[0, -1])
        together = model(torch.tensor([[prompt_ids(tok, n)[-1]] for n in lengths]), kv_cache=cache)[:, -1]
    assert cache.lengths == [n + 1 for n in lengths]
    torch.testing.assert_close(together, torch.stack(alone), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("smear", [False, True])
def test_prompts_of_different_lengths_prefilled_together_equal_each_prefilled_alone(tok, smear):
    """Right-padded to the longest (41, past the S layer's 32-token window): each row's next-token logits, its
    cache up to its own length, and (smear) the embedding the cache keeps are the prompt's own."""
    model = tiny_model(tok.vocab_size)
    if smear:
        model = GPT(dataclasses.replace(model.config, smear=True))
        torch.manual_seed(0)
        model.init_weights()
        with torch.no_grad():
            model.smear_lambda.fill_(0.5)
    engine = Engine(model.eval(), tok)
    prompts = [prompt_ids(tok, n) for n in (3, 41, 20)]
    logits, together = engine.prefill_together(prompts)
    assert together.lengths == [3, 41, 20]
    for row, prompt in enumerate(prompts):
        alone_logits, alone = engine.prefill(prompt)
        n = len(prompt)
        torch.testing.assert_close(logits[row], alone_logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(together.k[:, row, :, :n], alone.k[:, 0, :, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together.v[:, row, :, :n], alone.v[:, 0, :, :n], atol=1e-5, rtol=1e-5)
        if smear:
            torch.testing.assert_close(together.prev_embed[row], alone.prev_embed[0], atol=1e-6, rtol=1e-6)


def test_row_lengths_are_refused_for_a_cache_that_already_holds_tokens(engine, tok):
    _, cache = engine.prefill(prompt_ids(tok, 4))
    with pytest.raises(ValueError, match="empty cache"):
        engine.model(torch.tensor([prompt_ids(tok, 3)]), kv_cache=cache, last_only=True, row_lengths=[2])


class SuccessorModel(ScriptedModel):
    """Each row's next token is a fixed successor of the token it was fed last, so each request follows its own
    script whatever else is in the batch."""

    def __init__(self, real, successor: dict[int, int], default: int):
        super().__init__(real, [default])
        self.successor, self.default = successor, default

    # logits read at -1: padding repeats a prompt's last token; `capped` changes nothing (they are 0s and a 1)
    def forward(self, idx, kv_cache=None, last_only=False, row_lengths=None, capped=True):
        self.real(idx, kv_cache=kv_cache, row_lengths=row_lengths)
        logits = torch.zeros(idx.size(0), idx.size(1), self.config.vocab_size)
        for row, last in enumerate(idx[:, -1].tolist()):
            logits[row, -1, self.successor.get(last, self.default)] = 1.0
        return logits


def test_a_tool_call_in_one_row_runs_the_calculator_for_that_row_only(tok):
    special = tok.special_id
    end, call = special("<|assistant_end|>"), tok.encode("12*7")
    words = [t for t in tok.encode(" fox dog") if t not in call]
    script = [special("<|python_start|>"), *call, special("<|python_end|>")]
    successor = dict(zip(script, script[1:])) | {special("<|output_end|>"): end}
    tool_prompt, plain_prompt = prompt_ids(tok, 6), prompt_ids(tok, 9)
    successor |= {tool_prompt[-1]: script[0], plain_prompt[-1]: words[0]} | dict(zip(words, words[1:]))
    engine = Engine(SuccessorModel(tiny_model(tok.vocab_size), successor, end), tok)
    greedy = SamplingParams(max_tokens=30, temperature=0)
    jobs = [(plain_prompt, greedy, 0), (tool_prompt, greedy, 0), (plain_prompt, greedy, 2)]
    together = decode_together(engine, jobs, max_rows=3)
    output = [special("<|output_start|>"), *tok.encode("84"), special("<|output_end|>")]
    assert together[1] == [[*script, *output, end]]
    assert together[0] == together[2] == [[*words, end]]
    assert together == [decode_alone(engine, prompt, params) for prompt, params, _ in jobs]


def test_a_removed_request_frees_its_rows_for_the_next(engine, tok):
    batch = Batch(engine, 3, engine.context_length)
    first, _ = batch.add(prompt_ids(tok, 8), SamplingParams(max_tokens=30, temperature=0, num_samples=2))
    second, _ = batch.add(prompt_ids(tok, 12), SamplingParams(max_tokens=30, temperature=0))
    batch.step()
    with pytest.raises(ValueError, match="free rows"):
        batch.add(prompt_ids(tok, 5), SamplingParams(max_tokens=4, num_samples=2))
    batch.remove([first])
    assert batch.free_rows == 2 and second.cache_rows == [0] and batch.cache.lengths[0] == 13
    third, _ = batch.add(prompt_ids(tok, 5), SamplingParams(max_tokens=4, temperature=0, num_samples=2))
    assert third.cache_rows == [1, 2] and batch.slots == [second, third, third]


def test_chat_cli_shows_a_tool_call_readably_and_takes_a_system_prompt(tok):
    special = tok.special_id
    script = [*tok.encode("Sure"), special("<|python_start|>"), *tok.encode("12*7"), special("<|python_end|>")]
    script += [special("<|assistant_end|>")] * 20
    model = ScriptedModel(tiny_model(tok.vocab_size), script)
    engine, out, prompts = Engine(model, tok), io.StringIO(), []
    generate = engine.generate
    engine.generate = lambda prompt, params: prompts.append(prompt) or generate(prompt, params)
    run_chat(engine, ChatConfig(run="tiny", prompt="What is 12 times 7?", system="Be brief.", temperature=0), out)
    assert out.getvalue() == "Sure[calc: 12*7] -> 84\n"
    assert "Be brief." in tok.decode(prompts[0]) and "Be brief." not in tok.decode(prompt_ids(tok, 60))
