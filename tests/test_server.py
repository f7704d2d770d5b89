"""The HTTP server, started for real with uvicorn on a loopback port: OpenAI-style API, streaming, limits."""
import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the server needs FastAPI (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e '.[serve]')")

from infer_helpers import PacedModel, running_server, tiny_model, tiny_tokenizer  # noqa: E402
from picochat.infer.engine import Engine  # noqa: E402
from picochat.infer.limits import ServeConfig, TokenBucket  # noqa: E402

MODEL = "tiny-test"


@pytest.fixture(scope="module")
def base_url():
    tok = tiny_tokenizer()
    engine = Engine(tiny_model(tok.vocab_size, max_seq_len=128), tok)
    config = ServeConfig(max_tokens=24, rate_per_minute=0)
    with running_server(engine, MODEL, config) as url:
        yield url


def post(url: str, body, raw: bytes | None = None) -> tuple[int, dict | str, str]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            kind = response.headers.get("content-type", "")
            return response.status, json.loads(text) if "json" in kind else text, kind
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode()), e.headers.get("content-type", "")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def chat(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "What is 12 times 7?"}], **extra}


def test_health_and_models(base_url):
    health = get(f"{base_url}/health")
    assert health["status"] == "ok" and health["waiting"] == 0 and health["active_rows"] == 0
    assert [w["max_batch"] for w in health["workers"]] == [32] and "tokens_per_s" in health
    assert (health["device"], health["dtype"]) == ("cpu", "float32")  # the fixture's model computes in fp32
    models = get(f"{base_url}/v1/models")
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]


def test_non_streaming_completion_is_an_openai_chat_completion(base_url):
    status, body, _ = post(f"{base_url}/v1/chat/completions", chat(max_tokens=8, temperature=0.7, seed=1, n=2))
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == MODEL
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for choice in body["choices"]:
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    again = post(f"{base_url}/v1/chat/completions", chat(max_tokens=8, temperature=0.7, seed=1, n=2))[1]
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in body["choices"]]  # seeded


def test_streaming_sends_chunks_then_done_and_matches_the_non_streaming_text(base_url):
    status, text, kind = post(f"{base_url}/v1/chat/completions", chat(max_tokens=16, temperature=0, stream=True))
    assert status == 200 and kind.startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len(chunks) >= 3, "expected a role chunk, content chunks and a finish chunk"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    whole = post(f"{base_url}/v1/chat/completions", chat(max_tokens=16, temperature=0))[1]
    assert streamed == whole["choices"][0]["message"]["content"]


@pytest.mark.parametrize("body, raw, status, words", [
    (None, b"{not json", 400, "JSON"),
    ({"model": MODEL}, None, 400, "messages"),
    (chat(model="gpt-4o"), None, 404, "gpt-4o"),
    ({"messages": [{"role": "user", "content": "x" * 9000}]}, None, 400, "characters"),
    ({"messages": [{"role": "user", "content": "hello " * 1000}]}, None, 400, "context"),  # > 128 tokens
    (chat(temperature=5), None, 400, "temperature"),
    (chat(max_tokens=0), None, 400, "max_tokens"),
    ({"messages": [{"role": "tool", "content": "x"}]}, None, 400, "role"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, None, 400, "user"),
])
def test_bad_requests_get_4xx_with_a_message_and_the_server_keeps_serving(base_url, body, raw, status, words):
    code, error, _ = post(f"{base_url}/v1/chat/completions", body, raw)
    assert code == status
    assert words in error["error"]["message"]
    assert get(f"{base_url}/health")["status"] == "ok"
    assert post(f"{base_url}/v1/chat/completions", chat(max_tokens=2))[0] == 200


def test_concurrent_requests_are_all_served(base_url):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: post(f"{base_url}/v1/chat/completions", chat(max_tokens=4, seed=i))[0],
                                range(16)))
    assert results == [200] * 16


def test_openai_client_works_unchanged(base_url):
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6)
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens > 0
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=6, stream=True)
    chunks = list(stream)
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])


def test_rate_limit_answers_429_once_the_bucket_is_empty():
    now = [0.0]
    bucket = TokenBucket(rate_per_minute=60, burst=2, clock=lambda: now[0])
    assert [bucket.allow("a"), bucket.allow("a"), bucket.allow("a"), bucket.allow("b")] == [True, True, False, True]
    now[0] = 1.0  # one second refills one request at 60 per minute
    assert bucket.allow("a") and not bucket.allow("a")


def test_rate_limited_server_returns_429():
    tok = tiny_tokenizer()
    engine = Engine(tiny_model(tok.vocab_size, max_seq_len=64), tok)
    with running_server(engine, MODEL, ServeConfig(max_tokens=2, rate_per_minute=1, rate_burst=1)) as url:
        assert post(f"{url}/v1/chat/completions", chat())[0] == 200
        code, error, _ = post(f"{url}/v1/chat/completions", chat())
        assert code == 429 and "too many" in error["error"]["message"]


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def paced_url():
    """A server whose model takes 20 ms a step and never stops early, batching up to 6 rows."""
    tok = tiny_tokenizer()
    engine = Engine(PacedModel(tiny_model(tok.vocab_size, max_seq_len=256), pace=0.02), tok)
    engine.stop_ids = set()
    with running_server(engine, MODEL, ServeConfig(rate_per_minute=0, max_batch=6, max_batch_tokens=1200)) as url:
        yield url


def open_stream(url: str, body: dict) -> socket.socket:
    """Start a streaming request and leave it running; the caller closes the socket to disconnect."""
    data = json.dumps({**body, "stream": True}).encode()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def test_concurrent_requests_share_one_batch_and_a_disconnect_frees_its_rows_at_once(paced_url):
    hello = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 150}
    first, second = open_stream(paced_url, {**hello, "n": 2}), open_stream(paced_url, {**hello, "n": 3})
    health = lambda: get(f"{paced_url}/health")  # noqa: E731
    assert wait_for(lambda: health()["active_rows"] == 5), health()
    assert health()["active_requests"] == 2
    first.close()
    assert wait_for(lambda: health()["active_rows"] == 3, seconds=1.0), health()
    second.close()
    assert wait_for(lambda: health()["active_rows"] == 0, seconds=1.0), health()
    assert health()["tokens_per_s"] > 0


@pytest.mark.parametrize("extra, words", [({"n": 7}, "--max-batch"), ({"n": 6, "max_tokens": 250}, "budget")])
def test_a_request_that_can_never_fit_the_batch_is_refused(paced_url, extra, words):
    code, error, _ = post(f"{paced_url}/v1/chat/completions", chat(**extra))
    assert code == 400 and words in error["error"]["message"] and error["error"]["param"] in ("n", "max_tokens")


def test_a_full_queue_answers_503():
    tok = tiny_tokenizer()
    engine = Engine(PacedModel(tiny_model(tok.vocab_size, max_seq_len=256), pace=0.02), tok)
    engine.stop_ids = set()
    config = ServeConfig(rate_per_minute=0, max_batch=1, max_queue=1)
    with running_server(engine, MODEL, config) as url:
        hello = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 200}
        running, waiting = open_stream(url, hello), None
        try:
            assert wait_for(lambda: get(f"{url}/health")["active_rows"] == 1)
            waiting = open_stream(url, hello)
            assert wait_for(lambda: get(f"{url}/health")["waiting"] == 1)
            code, error, _ = post(f"{url}/v1/chat/completions", chat())
            assert code == 503 and "busy" in error["error"]["message"]
        finally:
            running.close()
            if waiting:
                waiting.close()
