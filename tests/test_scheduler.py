"""The server's model lanes: a newcomer's first token comes straight from its prefill; with a prefill lane (a CPU)
it does not wait for the decode step in flight; without one (a GPU) a crowd arriving together is prefilled a
chunk at a time between decode steps."""
import threading
import time
from collections import defaultdict

import pytest
import torch

from infer_helpers import tiny_model, tiny_tokenizer
from picochat.infer.engine import Engine, SamplingParams
from picochat.infer.scheduler import END, Scheduler, prefill_lane_threads

PROMPT_TOKENS = 10


def tiny_engine() -> Engine:
    tok = tiny_tokenizer()
    engine = Engine(tiny_model(tok.vocab_size), tok)
    engine.stop_ids = set()  # every reply runs to max_tokens
    return engine


class Deliveries:
    """What the scheduler hands each request: its token steps, the order they came in as (request, its step
    count), and a count of the requests that have finished."""

    def __init__(self):
        self.tokens, self.events, self.finished = defaultdict(list), [], threading.Semaphore(0)

    def to(self, key):
        def deliver(outcome):
            if outcome is END:
                self.finished.release()
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                self.tokens[key].append(outcome)
                self.events.append((key, len(self.tokens[key])))
        return deliver

    def wait_for(self, requests: int) -> None:
        for _ in range(requests):
            assert self.finished.acquire(timeout=60), f"not every request finished: {dict(self.tokens)}"

    def arrived(self, key, steps: int = 1, timeout: float = 60) -> bool:
        """Whether `key` has had `steps` token steps within `timeout` seconds (polled: lanes deliver from threads)."""
        deadline = time.monotonic() + timeout
        while len(self.tokens[key]) < steps and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.tokens[key]) >= steps

    def counts(self, keys) -> list[int]:
        return [len(self.tokens[key]) for key in keys]


def serve_crowd(prefill_chunk: int, crowd: int = 4, max_tokens: int = 6,
                stats: list | None = None) -> list[tuple[int, int]]:
    """`crowd` requests queued at once; the order in which tokens reached them, as (request, its token count);
    the scheduler's stats at the end go into `stats`."""
    scheduler = Scheduler(tiny_engine(), max_batch=crowd, max_batch_tokens=None, max_queue=crowd,
                          prefill_chunk=prefill_chunk)
    deliveries = Deliveries()
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    prompt = list(range(1, PROMPT_TOKENS + 1))
    with scheduler.wakeup:  # the model thread sees the whole crowd at once
        for i in range(crowd):
            scheduler.submit(prompt, params, deliveries.to(i))
    try:
        deliveries.wait_for(crowd)
        if stats is not None:
            stats.append(scheduler.stats())
    finally:
        scheduler.stop()
    assert deliveries.counts(range(crowd)) == [max_tokens] * crowd
    return deliveries.events


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


def test_the_prefill_lane_answers_a_newcomer_while_a_decode_step_is_in_flight():
    """With a prefill lane, a newcomer's first token does not wait for the step the batch is taking: the decode
    lane is held inside a step while the newcomer arrives, and its first token still comes."""
    scheduler = Scheduler(tiny_engine(), max_batch=4, max_batch_tokens=None, max_queue=4, prefill_threads=1)
    step, gate, held = scheduler.batch.step, threading.Event(), threading.Event()
    gate.set()

    def gated_step():
        if not gate.is_set():
            held.set()
            gate.wait(timeout=60)
        return step()
    scheduler.batch.step = gated_step
    deliveries, prompt = Deliveries(), list(range(1, PROMPT_TOKENS + 1))
    try:
        scheduler.submit(prompt, SamplingParams(max_tokens=40, temperature=0), deliveries.to("first"))
        assert deliveries.arrived("first", 3)  # it is decoding
        gate.clear()
        assert held.wait(timeout=60), "the decode lane never entered a step"
        scheduler.submit(prompt, SamplingParams(max_tokens=4, temperature=0), deliveries.to("newcomer"))
        assert deliveries.arrived("newcomer"), "the newcomer's first token waited for the decode step in flight"
        assert not gate.is_set()
    finally:
        gate.set()
    deliveries.wait_for(2)
    scheduler.stop()
    assert deliveries.counts(["newcomer", "first"]) == [4, 40]


def test_a_crowd_is_served_through_the_prefill_lane():
    scheduler = Scheduler(tiny_engine(), max_batch=3, max_batch_tokens=None, max_queue=8,
                          prefill_chunk=PROMPT_TOKENS, prefill_threads=1)
    deliveries = Deliveries()
    try:
        for i in range(6):  # twice the batch's rows: the second three wait for rows to free
            scheduler.submit(list(range(1, PROMPT_TOKENS + 1)), SamplingParams(max_tokens=5, temperature=0),
                             deliveries.to(i))
        deliveries.wait_for(6)
    finally:
        scheduler.stop()
    assert deliveries.counts(range(6)) == [5] * 6
    assert scheduler.rows_taken == 0 and scheduler.reserved_tokens == 0


def test_the_prefill_lane_prefills_one_request_at_a_time():
    """A CPU's prefill costs about the same per token alone or together: the first of a crowd that arrived at once
    does not wait for the others' prompts."""
    scheduler = Scheduler(tiny_engine(), max_batch=4, max_batch_tokens=None, max_queue=4, prefill_threads=1)
    prefill, sizes = scheduler.batch.prefill, []

    def recorded_prefill(arrivals):
        sizes.append(len(arrivals))
        return prefill(arrivals)
    scheduler.batch.prefill = recorded_prefill
    deliveries = Deliveries()
    try:
        with scheduler.wakeup:  # the lane sees the whole crowd at once
            for i in range(4):
                scheduler.submit(list(range(1, PROMPT_TOKENS + 1)), SamplingParams(max_tokens=3, temperature=0),
                                 deliveries.to(i))
        deliveries.wait_for(4)
    finally:
        scheduler.stop()
    assert sizes == [1, 1, 1, 1]
    assert deliveries.counts(range(4)) == [3] * 4


def test_the_decode_lane_prefills_a_newcomer_queued_behind_a_busy_prefill_lane():
    """The prefill lane is held inside a prefill; a newcomer queued behind it gets its first token anyway, from
    the decode lane, and both requests finish."""
    scheduler = Scheduler(tiny_engine(), max_batch=4, max_batch_tokens=None, max_queue=4, prefill_threads=1)
    prefill, gate, held = scheduler.batch.prefill, threading.Event(), threading.Event()

    def gated_prefill(arrivals):
        if threading.current_thread().name.startswith("picochat-prefill"):
            held.set()
            gate.wait(timeout=60)
        return prefill(arrivals)
    scheduler.batch.prefill = gated_prefill
    deliveries, prompt = Deliveries(), list(range(1, PROMPT_TOKENS + 1))
    try:
        scheduler.submit(prompt, SamplingParams(max_tokens=3, temperature=0), deliveries.to("held"))
        assert held.wait(timeout=60), "the prefill lane never took the first request"
        scheduler.submit(prompt, SamplingParams(max_tokens=3, temperature=0), deliveries.to("newcomer"))
        assert deliveries.arrived("newcomer"), "the newcomer waited for the busy prefill lane"
        assert not deliveries.tokens["held"]
    finally:
        gate.set()
    deliveries.wait_for(2)
    scheduler.stop()
    assert deliveries.counts(["held", "newcomer"]) == [3, 3]
    assert scheduler.rows_taken == 0 and scheduler.reserved_tokens == 0


def test_the_prefill_lane_takes_half_a_cpus_threads_and_none_on_a_gpu():
    assert prefill_lane_threads(torch.device("cpu"), None, 2) == 1
    assert prefill_lane_threads(torch.device("cpu"), None, 16) == 8
    assert prefill_lane_threads(torch.device("cpu"), None, 1) == 0  # one thread: prefill between steps
    assert prefill_lane_threads(torch.device("cuda"), None, 16) == 0
    assert prefill_lane_threads(torch.device("cpu"), 0, 2) == 0
    with pytest.raises(ValueError, match="leaves no thread for decoding"):
        prefill_lane_threads(torch.device("cpu"), 2, 2)


def test_serve_refuses_negative_prefill_threads():
    from picochat.errors import PicochatError
    from picochat.infer.limits import ServeConfig, check_serve_config
    with pytest.raises(PicochatError, match="--prefill-threads must be 0"):
        check_serve_config(ServeConfig(prefill_threads=-1))
