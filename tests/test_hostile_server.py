"""The server under hostile input (issue 16, item 8): oversized and malformed bodies, loose types, cross-site
requests, foreign Host headers, and clients that leave while the model is still working for them."""
import argparse
import http.client
import json
import socket
import time

import pytest

pytest.importorskip("fastapi", reason="the server needs FastAPI (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e '.[serve]')")

from infer_helpers import PacedModel, running_server, tiny_model, tiny_tokenizer  # noqa: E402
from picochat.errors import PicochatError  # noqa: E402
from picochat.infer import cli as infer_cli  # noqa: E402
from picochat.infer.engine import Engine  # noqa: E402
from picochat.infer.limits import MAX_BODY_BYTES, ServeConfig  # noqa: E402

MODEL = "tiny-test"
HELLO = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def port(tok):
    engine = Engine(tiny_model(tok.vocab_size, max_seq_len=128), tok)
    with running_server(engine, MODEL, ServeConfig(max_tokens=8, rate_per_minute=0)) as url:
        yield int(url.rsplit(":", 1)[1])


def send(port: int, head: str, body: bytes = b"", read_timeout: float = 10) -> tuple[int, dict | str, str]:
    """One raw HTTP request (`head` is the request line and headers, without the blank line): status, body, type."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        text, kind = response.read().decode(), response.getheader("content-type", "")
        return response.status, json.loads(text) if "json" in kind else text, kind


def post_head(port: int, length: int, content_type: str = "application/json", host: str | None = None,
              origin: str | None = None) -> str:
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}",
             f"Content-Type: {content_type}", f"Content-Length: {length}", "Connection: close"]
    return "\r\n".join(lines + ([f"Origin: {origin}"] if origin else []))


def post_json(port: int, body, **headers) -> tuple[int, dict | str, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return send(port, post_head(port, len(data), **headers), data)


def test_a_body_over_the_limit_is_refused_before_it_is_read(port):
    declared = 300_000_000  # the body is never sent in full: the answer must come from the headers alone
    status, body, kind = send(port, post_head(port, declared), b"{" + b" " * 65_536, read_timeout=5)
    assert status == 413 and "json" in kind and f"{MAX_BODY_BYTES:,}" in body["error"]["message"]


def test_a_chunked_body_over_the_limit_is_refused(port):
    valid_but_huge = json.dumps(HELLO).encode() + b" " * (MAX_BODY_BYTES + 1)
    head = "\r\n".join(["POST /v1/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
                        "Content-Type: application/json", "Transfer-Encoding: chunked"])
    step = 65_536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(valid_but_huge[i:i + step]), valid_but_huge[i:i + step])
                      for i in range(0, len(valid_but_huge), step))
    status, body, _ = send(port, head, chunks + b"0\r\n\r\n")
    assert status == 413 and "limit" in body["error"]["message"]


def test_deeply_nested_json_is_a_400_json_error(port):
    status, body, kind = post_json(port, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "json" in kind and "JSON" in body["error"]["message"]
    assert post_json(port, HELLO)[0] == 200


@pytest.mark.parametrize("field, value", [
    ("stream", "false"), ("stream", 0), ("model", 5), ("seed", "1"), ("stream_options", "yes"),
    ("messages", [{"role": "user", "content": [{"type": "text", "text": 5}]}]),
])
def test_every_field_has_a_strict_type(port, field, value):
    status, body, kind = post_json(port, {**HELLO, field: value})
    assert status == 400 and "json" in kind, (field, value, status, body)
    assert body["error"]["param"] == field


def test_a_cross_site_text_plain_post_is_refused(port):
    status, body, _ = post_json(port, HELLO, content_type="text/plain", origin="https://evil.example")
    assert status == 403 and "evil.example" in body["error"]["message"]
    assert post_json(port, HELLO, origin=f"http://127.0.0.1:{port}")[0] == 200  # the chat page itself
    assert post_json(port, HELLO, origin=f"http://localhost:{port + 1}")[0] == 403  # another local site


@pytest.mark.parametrize("path", ["/", "/health", "/v1/models"])
def test_a_foreign_host_header_is_refused(port, path):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 must not be answered."""
    status, body, _ = send(port, f"GET {path} HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close")
    assert status == 403 and "--allowed-hosts" in body["error"]["message"]
    assert send(port, f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close")[0] == 200


def test_allowed_hosts_flag_lets_a_named_host_and_its_pages_in(tok):
    engine = Engine(tiny_model(tok.vocab_size, max_seq_len=64), tok)
    config = ServeConfig(max_tokens=2, rate_per_minute=0, allowed_hosts="chat.example")
    with running_server(engine, MODEL, config) as url:
        port = int(url.rsplit(":", 1)[1])
        assert post_json(port, HELLO, host="chat.example", origin="https://chat.example")[0] == 200
        assert post_json(port, HELLO, host="other.example")[0] == 403


@pytest.fixture
def paced_server(tok):
    """A server whose model takes 20 ms a step and never stops early, so abandoned work would go on for seconds."""
    model = PacedModel(tiny_model(tok.vocab_size, max_seq_len=512), pace=0.02)
    engine = Engine(model, tok)
    engine.stop_ids = set()
    with running_server(engine, MODEL, ServeConfig(rate_per_minute=0)) as url:
        yield int(url.rsplit(":", 1)[1]), model


def calls_after_leaving(port: int, model: PacedModel, body: dict) -> tuple[int, int]:
    """Send `body`, wait for decoding to start, hang up; the model's call counts 0.5 s and 1.5 s later."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(post_head(port, len(data)).encode() + b"\r\n\r\n" + data)
    deadline = time.monotonic() + 10
    while model.calls < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert model.calls >= 3, "decoding never started"
    sock.close()
    time.sleep(0.5)
    settled = model.calls
    time.sleep(1.0)
    return settled, model.calls


@pytest.mark.parametrize("stream", [False, True])
def test_an_abandoned_request_stops_decoding(paced_server, stream):
    port, model = paced_server
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 400, "n": 8, "stream": stream}
    settled, later = calls_after_leaving(port, model, body)
    assert later == settled, f"the model ran {later - settled} more steps for a client that had gone"
    assert post_json(port, HELLO)[0] == 200


def test_serve_refuses_a_bad_port_before_loading_the_model(monkeypatch):
    loaded = []
    monkeypatch.setattr(infer_cli, "load_engine", lambda *a: loaded.append(a))
    parser = argparse.ArgumentParser()
    infer_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--run", "any-run", "--port", "70000"])
    with pytest.raises(PicochatError, match="--port 70000"):
        args.func(args)
    assert not loaded


@pytest.mark.parametrize("threads", ["-1", "99"])
def test_serve_refuses_an_impossible_prefill_lane_before_loading_the_model(monkeypatch, threads):
    loaded = []
    monkeypatch.setattr(infer_cli, "load_engine", lambda *a: loaded.append(a))
    parser = argparse.ArgumentParser()
    infer_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--run", "any-run", "--device", "cpu", "--prefill-threads", threads])
    with pytest.raises(PicochatError, match="--prefill-threads"):
        args.func(args)
    assert not loaded
