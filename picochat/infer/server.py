"""The HTTP server: a chat page at `/` and an OpenAI-compatible API (FastAPI + uvicorn).

Each model copy (one per accelerator, `--workers`) has a scheduler whose lanes prefill newcomers and decode every
request it holds in one continuous batch (picochat/infer/scheduler.py); a request goes to the least busy one. The
event loop keeps accepting, validating and streaming, and cancels a request the moment its client disconnects.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.datastructures import Headers

from picochat.errors import PicochatError
from picochat.infer.engine import Engine, PromptTooLongError, SamplingParams, StreamDecoder
from picochat.infer.scheduler import END, Scheduler, prefill_lane_threads
from picochat.infer.limits import (MAX_BODY_BYTES, ChatRequest, HostGuard, RequestError, ServeConfig, TokenBucket,
                                   parse_chat_request)
from picochat.runtime import dtype_name
from picochat.tokenizer.chat import ConversationError, render_for_completion

INDEX_HTML = Path(__file__).parent / "static" / "index.html"


def lane_threads(device: torch.device, config: ServeConfig) -> int:
    """The prefill lane's torch threads on `device` (scheduler.prefill_lane_threads), or a one-line error."""
    try:
        return prefill_lane_threads(device, config.prefill_threads, torch.get_num_threads())
    except ValueError as e:
        raise PicochatError(str(e)) from None


class ChatService:
    """Turns validated requests into engine runs and OpenAI-shaped answers."""

    def __init__(self, engines: list[Engine], model_name: str, config: ServeConfig):
        self.engine, self.model_name, self.config = engines[0], model_name, config
        self.schedulers = [Scheduler(engine, config.max_batch, config.max_batch_tokens, config.max_queue,
                                     config.prefill_chunk_tokens, lane_threads(engine.device, config))
                           for engine in engines]
        self.created = int(time.time())

    def health(self) -> dict:
        workers = [scheduler.stats() for scheduler in self.schedulers]
        totals = {key: sum(w[key] for w in workers) for key in ("waiting", "active_requests", "active_rows")}
        return {"status": "ok", "model": self.model_name, "device": str(self.engine.device),
                "dtype": dtype_name(self.engine.model.compute_dtype), **totals,
                "tokens_per_s": round(sum(w["tokens_per_s"] for w in workers), 1), "workers": workers}

    def prepare(self, request: ChatRequest) -> tuple[list[int], SamplingParams]:
        try:
            prompt = render_for_completion(self.engine.tokenizer, {"messages": request.messages})
            self.engine.reply_budget(len(prompt), request.max_tokens)
        except (ConversationError, PromptTooLongError) as e:
            raise RequestError(400, str(e), "messages") from e
        seed = request.seed if request.seed is not None else random.getrandbits(32)
        params = SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature, top_k=request.top_k,
                                top_p=request.top_p, seed=seed, num_samples=request.n)
        return prompt, params

    def _envelope(self, kind: str) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()),
                "model": self.model_name}

    async def complete(self, steps, prompt: list[int], params: SamplingParams) -> dict:
        rows: list[list[int]] = [[] for _ in range(params.num_samples)]
        async for step in steps:
            for row, token in zip(rows, step):
                if token is not None:
                    row.append(token)
        completions = [self.engine.completion(row) for row in rows]
        decode = self.engine.tokenizer.decode
        choices = [{"index": i, "message": {"role": "assistant", "content": decode(c.tokens)},
                    "finish_reason": c.finish_reason} for i, c in enumerate(completions)]
        generated = sum(len(c.tokens) for c in completions)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": generated, "total_tokens": len(prompt) + generated}
        return {**self._envelope("chat.completion"), "choices": choices, "usage": usage}

    async def stream(self, steps, params: SamplingParams):
        """Server-sent events: chat.completion.chunk objects, one per text delta, then `data: [DONE]`."""
        envelope = self._envelope("chat.completion.chunk")

        def event(index: int, delta: dict, finish_reason: str | None = None) -> str:
            chunk = {**envelope, "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}]}
            return f"data: {json.dumps(chunk)}\n\n"

        decoders = [StreamDecoder(self.engine.tokenizer) for _ in range(params.num_samples)]
        finished = [False] * params.num_samples
        for i in range(params.num_samples):
            yield event(i, {"role": "assistant", "content": ""})
        async for step in steps:
            for i, token in enumerate(step):
                if token is None or finished[i]:
                    continue
                if token in self.engine.stop_ids:
                    finished[i] = True
                    yield event(i, {"content": decoders[i].flush()}, "stop")
                elif text := decoders[i].push(token):
                    yield event(i, {"content": text})
        for i in range(params.num_samples):
            if not finished[i]:
                yield event(i, {"content": decoders[i].flush()}, "length")
        yield "data: [DONE]\n\n"

    def start_steps(self, prompt: list[int], params: SamplingParams):
        """Queue a generation now (a refusal raises before any byte is sent); iterate its steps asynchronously.

        The scheduler thread hands each step to the event loop as it comes; leaving the iteration early
        (a disconnect cancels it) takes the request out of the batch.
        """
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        scheduler = min(self.schedulers, key=lambda s: len(s.waiting) + len(s.batch.slots))

        def hand_over(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                scheduler.cancel(job)

        job = scheduler.submit(prompt, params, hand_over)

        async def steps():
            try:
                while (item := await queue.get()) is not END:
                    if isinstance(item, Exception):
                        raise item
                    yield item
            finally:
                scheduler.cancel(job)
        return steps(), lambda: scheduler.cancel(job)


class HostCheck:
    """The Host/Origin check (limits.HostGuard) before any route, as plain ASGI middleware: Starlette's
    `@app.middleware("http")` wraps every response in its own streams, which costs each streamed token."""

    def __init__(self, app, guard: HostGuard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            try:
                self.guard.check(headers.get("host"), headers.get("origin"))
            except RequestError as error:
                await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with a 413 as soon as it is known to exceed `limit` (from Content-Length, or as it arrives)."""
    too_large = RequestError(413, f"the request body is over the limit of {limit:,} bytes", kind="request_too_large")
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit():
        raise RequestError(400, f"Content-Length {declared!r} is not a number of bytes")
    if int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request):
    try:
        return json.loads(await read_body(request))
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not valid JSON: {e}") from e
    except RecursionError:  # json.loads recurses once per nesting level
        raise RequestError(400, "the request body is not valid JSON: nested too deeply") from None


async def client_left(request: Request) -> None:
    """Returns once the client has disconnected (or the response is complete)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work):
    """Await `work`; if the client disconnects first, cancel it (which frees the model) and return None."""
    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(client_left(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    return task.result() if task.done() and not task.cancelled() else None


def create_app(engines: Engine | list[Engine], model_name: str, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The app; `engines` holds one engine per worker (a single engine is one worker)."""
    service = ChatService(engines if isinstance(engines, list) else [engines], model_name, config)
    limiter = TokenBucket(config.rate_per_minute, config.rate_burst)
    guard = HostGuard(config)
    page = INDEX_HTML.read_text()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        for scheduler in service.schedulers:
            scheduler.stop()

    app = FastAPI(title="picochat", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception):
        return JSONResponse(RequestError(500, f"internal error ({type(error).__name__})", kind="server_error").body(),
                            status_code=500)

    app.add_middleware(HostCheck, guard=guard)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": service.created,
                                            "owned_by": "picochat", "context_length": service.engine.context_length}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if not limiter.allow(client_address(request)):
            raise RequestError(429, "too many requests from this client; slow down and retry",
                               kind="rate_limit_exceeded")
        chat = parse_chat_request(await read_json(request), model_name, config)
        prompt, params = service.prepare(chat)
        steps, cancel = service.start_steps(prompt, params)
        if chat.stream:
            # Starlette stops sending when the client disconnects but leaves the stream suspended, so a
            # watcher takes the request out of the batch itself
            watcher = asyncio.ensure_future(client_left(request))
            watcher.add_done_callback(lambda _: cancel())
            return StreamingResponse(service.stream(steps, params), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(watcher.cancel))
        return await unless_client_leaves(request, service.complete(steps, prompt, params))

    return app


def serve(engines: list[Engine], model_name: str, config: ServeConfig) -> None:
    uvicorn.run(create_app(engines, model_name, config), host=config.host, port=config.port, log_level="info")
