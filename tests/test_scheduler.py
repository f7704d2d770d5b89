"""The server's model thread: a crowd arriving together is prefilled a chunk at a time between decode steps, and a
newcomer's first token comes straight from its prefill."""
import threading

import pytest

from infer_helpers import tiny_model, tiny_tokenizer
from picochat.infer.engine import Engine, SamplingParams
from picochat.infer.scheduler import END, Scheduler

PROMPT_TOKENS = 10


def serve_crowd(prefill_chunk: int, crowd: int = 4, max_tokens: int = 6, stats: list | None = None) -> list[tuple[int, int]]:
    """`crowd` requests queued at once; the order in which tokens reached them, as (request, its token count);
    the scheduler's stats at the end go into `stats`."""
    tok = tiny_tokenizer()
    engine = Engine(tiny_model(tok.vocab_size), tok)
    engine.stop_ids = set()  # every reply runs to max_tokens
    scheduler = Scheduler(engine, max_batch=crowd, max_batch_tokens=None, max_queue=crowd,
                          prefill_chunk=prefill_chunk)
    events, received, finished = [], [0] * crowd, threading.Semaphore(0)

    def deliverer(index: int):
        def deliver(outcome):
            if outcome is END:
                finished.release()
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                received[index] += 1
                events.append((index, received[index]))
        return deliver

    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    prompt = list(range(1, PROMPT_TOKENS + 1))
    with scheduler.wakeup:  # the model thread sees the whole crowd at once
        for i in range(crowd):
            scheduler.submit(prompt, params, deliverer(i))
    try:
        for _ in range(crowd):
            assert finished.acquire(timeout=60), f"not every request finished: {received}"
        if stats is not None:
            stats.append(scheduler.stats())
    finally:
        scheduler.stop()
    assert received == [max_tokens] * crowd
    return events


def test_a_crowd_within_one_chunk_gets_every_first_token_from_one_prefill():
    events = serve_crowd(prefill_chunk=512)
    assert events[:4] == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_a_crowd_larger_than_a_chunk_is_admitted_between_decode_steps():
    """A chunk of two prompts: the first two requests get their first tokens at once and a second token (one
    decode step) before the next two are prefilled."""
    events = serve_crowd(prefill_chunk=2 * PROMPT_TOKENS)
    assert events[:2] == [(0, 1), (1, 1)]
    assert events.index((0, 2)) < events.index((2, 1)) and events.index((1, 2)) < events.index((3, 1))


def test_a_prompt_longer_than_the_chunk_is_still_admitted():
    events = serve_crowd(prefill_chunk=1, crowd=2)
    assert events.index((0, 1)) < events.index((1, 1))


def test_stats_report_the_median_wait_for_a_first_token():
    stats = []
    serve_crowd(prefill_chunk=512, stats=stats)
    [health] = stats
    assert health["active_rows"] == 0 and 0 < health["time_to_first_token_p50_s"] < 60


def test_serve_refuses_a_prefill_chunk_below_one():
    from picochat.errors import PicochatError
    from picochat.infer.limits import ServeConfig, check_serve_config
    with pytest.raises(PicochatError, match="--prefill-chunk-tokens must be at least 1"):
        check_serve_config(ServeConfig(prefill_chunk_tokens=0))
