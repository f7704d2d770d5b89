"""The model's one thread: it admits waiting requests into a continuous batch, steps the batch, hands tokens back.

A request waits in a bounded queue (full: 503) until the batch has rows for its samples and room in the
token budget (the KV positions its rows may fill: samples × (prompt + reply budget)); requests are admitted
in arrival order, so a big one is not starved by small ones behind it. Between two decode steps the scheduler
drops requests whose client has gone, so their rows serve someone else at the next step, and prefills the
next newcomers, up to `prefill_chunk` prompt tokens at a time (the first one whatever its length): a crowd
arriving together is admitted over a few steps, its first members answered after one chunk's prefill rather
than everyone's, while the rows already decoding keep moving (vLLM's chunked prefill schedules by such a
per-step token budget; picochat chunks by whole prompts). A newcomer's first token is delivered straight
from its prefill. Every outcome goes to the request's `deliver` callback, on this thread: tokens, an
exception, or END once the request has finished.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from picochat.infer.engine import Batch, Engine, Request, SamplingParams
from picochat.infer.limits import RequestError

END = object()  # delivered once a request has finished
RATE_WINDOW_S = 10.0  # tokens/s in /health is measured over this many recent seconds
RECENT_REQUESTS = 256  # time to first token in /health: the median over this many recent requests


@dataclass(eq=False)
class Job:
    prompt: list[int]
    params: SamplingParams
    deliver: Callable[[object], None]
    reserved_tokens: int
    cancelled: bool = False
    request: Request | None = None  # set once admitted into the batch
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class Throughput:
    """Tokens produced over the last RATE_WINDOW_S seconds."""
    events: deque = field(default_factory=deque)  # (time, tokens)

    def add(self, tokens: int, now: float) -> None:
        self.events.append((now, tokens))
        while self.events and self.events[0][0] < now - RATE_WINDOW_S:
            self.events.popleft()

    def per_second(self, now: float) -> float:
        recent = [tokens for t, tokens in self.events if t >= now - RATE_WINDOW_S]
        return sum(recent) / RATE_WINDOW_S


class Scheduler:
    def __init__(self, engine: Engine, max_batch: int, max_batch_tokens: int | None, max_queue: int,
                 prefill_chunk: int = 512):
        self.engine, self.max_queue, self.prefill_chunk = engine, max_queue, prefill_chunk
        self.max_batch_tokens = max_batch_tokens or max_batch * engine.context_length
        self.batch = Batch(engine, max_batch, engine.context_length)
        self.waiting: deque[Job] = deque()
        self.running: dict[Request, Job] = {}
        self.reserved_tokens = 0
        self.throughput = Throughput()
        self.first_token_waits: deque[float] = deque(maxlen=RECENT_REQUESTS)  # submit -> first token, seconds
        self.wakeup = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name=f"picochat-model-{engine.device}", daemon=True)
        self.thread.start()

    def submit(self, prompt: list[int], params: SamplingParams, deliver: Callable[[object], None]) -> Job:
        """Queue a request, or refuse it now: 400 if it can never fit the batch, 503 if the queue is full."""
        rows = self.batch.cache.batch_size
        budget = self.engine.reply_budget(len(prompt), params.max_tokens)
        job = Job(prompt, params, deliver, params.num_samples * (len(prompt) + budget))
        if params.num_samples > rows:
            raise RequestError(400, f"n={params.num_samples} needs more rows than this server's batch has "
                                    f"({rows}, --max-batch)", "n")
        if job.reserved_tokens > self.max_batch_tokens:
            raise RequestError(400, f"the request needs {job.reserved_tokens:,} tokens of cache (n x (prompt + "
                                    f"max_tokens)); this server's budget is {self.max_batch_tokens:,}; lower "
                                    f"max_tokens or n", "max_tokens")
        with self.wakeup:
            if len(self.waiting) >= self.max_queue:
                raise RequestError(503, f"the server is busy ({len(self.waiting)} requests waiting); retry shortly",
                                   kind="server_busy")
            self.waiting.append(job)
            self.wakeup.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client has gone: forget the request, freeing its rows before the next step."""
        with self.wakeup:
            job.cancelled = True
            self.wakeup.notify()

    def stats(self) -> dict:
        with self.wakeup:
            return {"device": str(self.engine.device), "waiting": len(self.waiting),
                    "active_requests": len(self.running), "active_rows": len(self.batch.slots),
                    "max_batch": self.batch.cache.batch_size,
                    "tokens_per_s": round(self.throughput.per_second(time.monotonic()), 1),
                    "time_to_first_token_p50_s": round(statistics.median(self.first_token_waits), 4)
                    if self.first_token_waits else None}

    def stop(self) -> None:
        with self.wakeup:
            self.stopped = True
            self.wakeup.notify()
        self.thread.join(timeout=10)

    # --- the model thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.wakeup:
                while not self.stopped and not self.running and not self._live_waiting():
                    self.wakeup.wait()
                if self.stopped:
                    return
                leaving = [job for job in self.running.values() if job.cancelled]
                admitted = self._admit()
            self._release(leaving)
            if admitted:
                self._start(admitted)
            if self.running:
                self._step()

    def _live_waiting(self) -> bool:
        while self.waiting and self.waiting[0].cancelled:
            self.waiting.popleft()
        return bool(self.waiting)

    def _admit(self) -> list[Job]:
        """Jobs that fit now, in arrival order, up to one prefill chunk of prompt tokens (under the lock)."""
        admitted, rows = [], self.batch.free_rows + sum(len(j.request.cache_rows) for j in self.running.values()
                                                         if j.cancelled)
        prompt_tokens = 0
        while self._live_waiting():
            job = self.waiting[0]
            if job.params.num_samples > rows or self.reserved_tokens + job.reserved_tokens > self.max_batch_tokens:
                break
            if admitted and prompt_tokens + len(job.prompt) > self.prefill_chunk:
                break  # the rest wait one decode step
            self.waiting.popleft()
            rows -= job.params.num_samples
            self.reserved_tokens += job.reserved_tokens
            prompt_tokens += len(job.prompt)
            admitted.append(job)
        return admitted

    def _release(self, jobs: list[Job]) -> None:
        self.batch.remove([job.request for job in jobs])
        for job in jobs:
            self._forget(job)

    def _forget(self, job: Job) -> None:
        with self.wakeup:
            self.running.pop(job.request, None)
            self.reserved_tokens -= job.reserved_tokens

    def _start(self, jobs: list[Job]) -> None:
        """Prefill the admitted jobs together; if that fails, one by one, so a bad request fails alone."""
        try:
            outputs = self.batch.add_together([(job.prompt, job.params) for job in jobs])
        except Exception as e:  # noqa: BLE001  (one request's failure is its own, never the server's)
            if len(jobs) > 1:
                for job in jobs:
                    self._start([job])
                return
            with self.wakeup:
                self.reserved_tokens -= jobs[0].reserved_tokens
            jobs[0].deliver(e)
            return
        now = time.monotonic()
        with self.wakeup:
            for job, (request, _) in zip(jobs, outputs):
                job.request = request
                self.running[request] = job
                self.first_token_waits.append(now - job.submitted)
        self._deliver(outputs)

    def _step(self) -> None:
        try:
            outputs = self.batch.step()
        except Exception as e:  # noqa: BLE001  (tell every client, start again with an empty batch)
            for job in list(self.running.values()):
                job.deliver(e)
                self._forget(job)
            self.batch = Batch(self.engine, self.batch.cache.batch_size, self.batch.max_len)
            return
        self._deliver(outputs)

    def _deliver(self, outputs: list) -> None:
        """Each request's new tokens to its client; a finished request's END, and its rows and budget freed."""
        produced = 0
        for request, tokens in outputs:
            job = self.running[request]
            produced += sum(token is not None for token in tokens)
            job.deliver(tokens)
            if request.done:
                job.deliver(END)
                self._forget(job)
        self.throughput.add(produced, time.monotonic())
