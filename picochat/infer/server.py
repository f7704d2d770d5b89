"""The HTTP server: a chat page at `/` and an OpenAI-compatible API (FastAPI + uvicorn).

One model per process. Its engine runs on a single worker thread, so requests wait their turn in a
queue (bounded by `max_queue`) while the event loop keeps accepting, validating and streaming.
"""
from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from picochat.infer.engine import Engine, PromptTooLongError, SamplingParams, StreamDecoder
from picochat.infer.limits import (MAX_BODY_BYTES, ChatRequest, HostGuard, RequestError, ServeConfig, TokenBucket,
                                   parse_chat_request)
from picochat.tokenizer.chat import ConversationError, render_for_completion

INDEX_HTML = Path(__file__).parent / "static" / "index.html"
END_OF_STREAM = object()


class ModelWorker:
    """Runs engine calls one at a time on one thread; refuses work once `max_queue` requests wait."""

    def __init__(self, max_queue: int):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="picochat-model")
        self.max_queue, self.pending, self.lock = max_queue, 0, threading.Lock()

    def submit(self, fn) -> Future:
        with self.lock:
            if self.pending >= self.max_queue:
                raise RequestError(503, f"the server is busy ({self.pending} requests waiting); retry shortly",
                                   kind="server_busy")
            self.pending += 1
        future = self.executor.submit(fn)
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self.lock:
            self.pending -= 1


class ChatService:
    """Turns validated requests into engine runs and OpenAI-shaped answers."""

    def __init__(self, engine: Engine, model_name: str, config: ServeConfig):
        self.engine, self.model_name, self.config = engine, model_name, config
        self.worker = ModelWorker(config.max_queue)
        self.created = int(time.time())

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
        """Queue a generation now (a full queue raises before any byte is sent); iterate its steps asynchronously.

        The engine runs on the model thread and hands each step to the event loop as it comes.
        """
        loop, queue, cancelled = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

        def hand_over(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                cancelled.set()

        def work() -> None:
            try:
                if cancelled.is_set():  # the client left while the request waited in the queue
                    return
                for step in self.engine.generate(prompt, params):
                    if cancelled.is_set():  # the client went away: free the model for the next request
                        break
                    hand_over(step)
            except Exception as e:  # noqa: BLE001  (re-raised on the event loop's side)
                hand_over(e)
            finally:
                hand_over(END_OF_STREAM)

        self.worker.submit(work)

        async def steps():
            try:
                while (item := await queue.get()) is not END_OF_STREAM:
                    if isinstance(item, Exception):
                        raise item
                    yield item
            finally:
                cancelled.set()
        return steps()


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


async def unless_client_leaves(request: Request, work):
    """Await `work`; if the client disconnects first, cancel it (which frees the model) and return None."""
    async def client_left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    return task.result() if task.done() and not task.cancelled() else None


def create_app(engine: Engine, model_name: str, config: ServeConfig = ServeConfig()) -> FastAPI:
    service = ChatService(engine, model_name, config)
    limiter = TokenBucket(config.rate_per_minute, config.rate_burst)
    guard = HostGuard(config)
    page = INDEX_HTML.read_text()
    app = FastAPI(title="picochat", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception):
        return JSONResponse(RequestError(500, f"internal error ({type(error).__name__})", kind="server_error").body(),
                            status_code=500)

    @app.middleware("http")
    async def check_host_and_origin(request: Request, call_next):
        try:
            guard.check(request.headers.get("host"), request.headers.get("origin"))
        except RequestError as error:
            return JSONResponse(error.body(), status_code=error.status)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "device": str(engine.device), "waiting": service.worker.pending}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": service.created,
                                            "owned_by": "picochat", "context_length": engine.context_length}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if not limiter.allow(client_address(request)):
            raise RequestError(429, "too many requests from this client; slow down and retry",
                               kind="rate_limit_exceeded")
        chat = parse_chat_request(await read_json(request), model_name, config)
        prompt, params = service.prepare(chat)
        steps = service.start_steps(prompt, params)
        if chat.stream:  # Starlette cancels the stream (and so the generation) when the client disconnects
            return StreamingResponse(service.stream(steps, params), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await unless_client_leaves(request, service.complete(steps, prompt, params))

    return app


def serve(engine: Engine, model_name: str, config: ServeConfig) -> None:
    uvicorn.run(create_app(engine, model_name, config), host=config.host, port=config.port, log_level="info")
