"""The model's two lanes: one admits waiting requests and prefills them, the other steps the continuous batch.

A request waits in a bounded queue (full: 503) until the batch has rows for its samples and room in the
token budget (the KV positions its rows may fill: samples × (prompt + reply budget)); requests are admitted
in arrival order, so a big one is not starved by small ones behind it, up to `prefill_chunk` prompt tokens at a
time (the first one whatever its length), which are prefilled in one forward; the prefill lane (below) takes one
request at a time. A newcomer's first token is delivered straight from its prefill; it joins the batch at the
next step boundary, and between two steps the batch also drops requests whose client has gone, so their rows
serve someone else at the next step.

On a CPU the prefill lane is a thread of its own with its own share of the cores (`prefill_threads`), so a
newcomer's first token waits for one prefill, never for the decode step in flight: a 32-row step is longer than
a short prompt's prefill, and a newcomer that waits for it sees several times a lone client's time to first
token (the split of prefill from decode, on separate GPUs, is DistServe's, OSDI 2024). Each lane gives torch its
own thread count: one OpenMP team per lane on cores of their own (libgomp makes every team's threads sleep
between parallel regions as soon as there are more of them than cores, which slows a forward by half). When a
newcomer queues behind the prompt the prefill lane is busy with, the decode lane prefills it before its next step.
With no prefill lane (a GPU, where a step takes milliseconds; `prefill_threads` 0) the decode lane prefills
the newcomers itself between two steps, a chunk at a time, while the rows already decoding keep moving (vLLM's
chunked prefill schedules by such a per-step token budget; picochat chunks by whole prompts).
Every outcome goes to the request's `deliver` callback, on a lane's thread: tokens, an exception, or END once the
request has finished.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from picochat.infer.engine import Batch, Engine, Prefilled, Request, SamplingParams
from picochat.infer.limits import RequestError

END = object()  # delivered once a request has finished
RATE_WINDOW_S = 10.0  # tokens/s in /health is measured over this many recent seconds
RECENT_REQUESTS = 256  # time to first token in /health: the median over this many recent requests


def prefill_lane_threads(device: torch.device, configured: int | None, threads: int) -> int:
    """Torch threads for the prefill lane (0: none, the decode lane prefills): as configured, else half the
    `threads` of a CPU (one of two cores) and none on an accelerator."""
    if configured is not None:
        if configured >= threads and configured > 0:
            raise ValueError(f"--prefill-threads {configured} leaves no thread for decoding ({threads} in all); "
                             f"use at most {threads - 1}, or 0 to prefill between decode steps")
        return configured
    return threads // 2 if device.type == "cpu" else 0


@dataclass(eq=False)
class Job:
    prompt: list[int]
    params: SamplingParams
    deliver: Callable[[object], None]
    reserved_tokens: int
    cancelled: bool = False
    request: Request | None = None  # set once prefilled
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
                 prefill_chunk: int = 512, prefill_threads: int = 0):
        self.engine, self.max_queue, self.prefill_chunk = engine, max_queue, prefill_chunk
        self.max_batch_tokens = max_batch_tokens or max_batch * engine.context_length
        self.batch = Batch(engine, max_batch, engine.context_length)
        self.waiting: deque[Job] = deque()
        self.joining: list[tuple[Job, Prefilled]] = []  # prefilled, to join the batch at the next step boundary
        self.running: dict[Request, Job] = {}
        self.rows_taken = 0  # rows held by admitted requests (prefilling, joining or decoding)
        self.reserved_tokens = 0
        self.throughput = Throughput()
        self.first_token_waits: deque[float] = deque(maxlen=RECENT_REQUESTS)  # submit -> first token, seconds
        self.wakeup = threading.Condition()
        self.stopped = False
        self.prefilling = False  # the prefill lane is busy with a prompt
        decode_threads = max(1, torch.get_num_threads() - prefill_threads) if prefill_threads else None
        self.threads = [threading.Thread(target=self._decode_lane, args=(decode_threads,),
                                         name=f"picochat-decode-{engine.device}", daemon=True)]
        if prefill_threads:
            self.threads.append(threading.Thread(target=self._prefill_lane, args=(prefill_threads,),
                                                 name=f"picochat-prefill-{engine.device}", daemon=True))
        for thread in self.threads:
            thread.start()

    @property
    def prefill_lane(self) -> bool:
        return len(self.threads) > 1

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
            self.wakeup.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """The client has gone: forget the request, freeing its rows before the next step."""
        with self.wakeup:
            job.cancelled = True
            self.wakeup.notify_all()

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
            self.wakeup.notify_all()
        for thread in self.threads:
            thread.join(timeout=10)

    # --- the lanes --------------------------------------------------------------------------------

    def _decode_lane(self, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        while True:
            with self.wakeup:
                while not (self.stopped or self.running or self.joining or self._prefill_wanted()):
                    self.wakeup.wait()
                if self.stopped:
                    return
                leaving = [job for job in self.running.values() if job.cancelled]
            self._release(leaving)
            with self.wakeup:
                admitted = self._admit(one=self.prefill_lane) if self._prefill_wanted() else []
            if admitted:
                self._prefill(admitted)
            with self.wakeup:
                joining, self.joining = self.joining, []
            self._join(joining)
            if self.running:
                self._step()

    def _prefill_lane(self, threads: int) -> None:
        torch.set_num_threads(threads)
        while True:
            with self.wakeup:
                while not self.stopped and not (admitted := self._admit(one=True)):
                    self.wakeup.wait()
                if self.stopped:
                    return
                self.prefilling = True
            try:
                self._prefill(admitted)
            finally:
                with self.wakeup:
                    self.prefilling = False
                    self.wakeup.notify_all()

    def _prefill_wanted(self) -> bool:
        """Whether the decode lane should prefill before its next step (under the lock): always when there is no
        prefill lane; with one, when a newcomer is queued behind the prompt the lane is busy with. A first token
        is worth more than a step of rows already streaming, and without this help the one-core lane queues: on 2
        cores under 32 clients of a d4 with short steps it was busy half the time, and the median newcomer waited
        13 ms before its own 15 ms prefill began (the decode lane helps once per step, so its rows keep moving)."""
        if not (self._live_waiting() and self._fits(self.waiting[0])):
            return False
        return not self.prefill_lane or self.prefilling

    def _fits(self, job: Job) -> bool:
        """Whether the batch has rows and token budget left for `job` (under the lock)."""
        return (self.rows_taken + job.params.num_samples <= self.batch.cache.batch_size
                and self.reserved_tokens + job.reserved_tokens <= self.max_batch_tokens)

    def _live_waiting(self) -> bool:
        while self.waiting and self.waiting[0].cancelled:
            self.waiting.popleft()
        return bool(self.waiting)

    def _admit(self, one: bool = False) -> list[Job]:
        """Jobs that fit now, in arrival order, up to one prefill chunk of prompt tokens, or `one` job (under the
        lock). The prefill lane takes one: a CPU's prefill costs about the same per token alone or together, so
        prompts prefilled together save little and each waits for all (under 32 clients on 2 cores, the lane
        prefilled 1.6 prompts a time, and the median first token came 4-12 ms later than one prompt a time)."""
        admitted, prompt_tokens = [], 0
        while self._live_waiting():
            job = self.waiting[0]
            if not self._fits(job):
                break
            if admitted and (one or prompt_tokens + len(job.prompt) > self.prefill_chunk):
                break  # the rest wait for the next chunk
            self.waiting.popleft()
            self.rows_taken += job.params.num_samples
            self.reserved_tokens += job.reserved_tokens
            prompt_tokens += len(job.prompt)
            admitted.append(job)
        return admitted

    def _forget(self, job: Job) -> None:
        """The job holds no rows or budget any more (finished, failed, or its client gone)."""
        with self.wakeup:
            if job.request is not None:
                self.running.pop(job.request, None)
            self.rows_taken -= job.params.num_samples
            self.reserved_tokens -= job.reserved_tokens
            self.wakeup.notify_all()

    def _prefill(self, jobs: list[Job]) -> None:
        """Prefill the admitted jobs together (if that fails, one by one, so a bad request fails alone), hand
        each its first tokens, and queue those still writing to join the batch."""
        try:
            prefilled = self.batch.prefill([(job.prompt, job.params) for job in jobs])
        except Exception as e:  # noqa: BLE001  (one request's failure is its own, never the server's)
            if len(jobs) > 1:
                for job in jobs:
                    self._prefill([job])
                return
            self._forget(jobs[0])
            jobs[0].deliver(e)
            return
        now = time.monotonic()
        with self.wakeup:
            for job, arrival in zip(jobs, prefilled):
                job.request = arrival.request
                self.first_token_waits.append(now - job.submitted)
            self.throughput.add(sum(len(a.first_tokens) for a in prefilled), now)
        for job, arrival in zip(jobs, prefilled):
            job.deliver(arrival.first_tokens)
            if arrival.request.done:
                job.deliver(END)
                self._forget(job)
        with self.wakeup:
            self.joining += [(job, arrival) for job, arrival in zip(jobs, prefilled) if not arrival.request.done]
            self.wakeup.notify_all()

    def _join(self, joining: list[tuple[Job, Prefilled]]) -> None:
        """Prefilled requests into the batch (their rows were set aside at admission); a gone client's are freed."""
        for job, _ in joining:
            if job.cancelled:
                self._forget(job)
        staying = [(job, arrival) for job, arrival in joining if not job.cancelled]
        self.batch.join([arrival for _, arrival in staying])
        with self.wakeup:
            for job, arrival in staying:
                self.running[arrival.request] = job

    def _release(self, jobs: list[Job]) -> None:
        self.batch.remove([job.request for job in jobs])
        for job in jobs:
            self._forget(job)

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
        with self.wakeup:
            self.throughput.add(produced, time.monotonic())
