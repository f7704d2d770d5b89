"""The chat page in a real headless Chromium at a phone's viewport: streaming, stop, regenerate, edit, the system
prompt, slash commands, copy, the calculator box and Markdown, with model output that tries to inject HTML."""
import json
import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the server needs FastAPI (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e '.[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

from infer_helpers import ReplyScriptModel, running_server, tiny_model, tiny_tokenizer  # noqa: E402
from picochat.infer.engine import Engine  # noqa: E402
from picochat.infer.limits import ServeConfig  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package, not Playwright's download
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}
REPLY = "Here is **bold** and <script>window.pwned = 1</script> code:\n\n```\nprint(1)\n```\n\n"
FILLER = " la" * 40  # long enough to press Stop while it streams

# Records each text the reply shows, so the test can tell a streamed reply from one that arrived whole.
WATCH_REPLY = """() => {
  window.replyTexts = new Set();
  new MutationObserver(() => {
    const reply = document.querySelector('.message.assistant .body');
    if (reply && reply.textContent) window.replyTexts.add(reply.textContent);
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""


def scripted_engine(tok) -> Engine:
    """Every reply: REPLY, a calculator call (12*7, answered 84 by the engine's sandbox), then FILLER."""
    special = tok.special_id
    forced = 2 + len(tok.encode("84"))  # the steps the engine spends writing <|output_start|>84<|output_end|>
    call = [special("<|python_start|>"), *tok.encode("12*7"), special("<|python_end|>")]
    script = [*tok.encode(REPLY), *call, *tok.encode(" ") * forced, *tok.encode(" done." + FILLER)]
    model = ReplyScriptModel(tiny_model(tok.vocab_size, max_seq_len=512), script, special("<|assistant_end|>"),
                             pace=0.02)
    return Engine(model, tok)


@pytest.fixture
def page(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    tok = tiny_tokenizer()
    config = ServeConfig(max_tokens=300, temperature=1.0, top_k=0, seed=0, rate_per_minute=0)
    with running_server(scripted_engine(tok), "tiny-test", config) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=PHONE, permissions=["clipboard-read", "clipboard-write"])
            page = context.new_page()
            page.sent = []  # the body of every chat request the page makes
            page.on("request", lambda r: page.sent.append(json.loads(r.post_data)) if r.method == "POST" else None)
            page.goto(url)
            yield page
        finally:
            browser.close()


def wait_idle(page) -> None:
    page.wait_for_function("() => !document.getElementById('send').hidden", timeout=30_000)


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


@pytest.mark.slow
def test_the_chat_page_on_a_phone(page, tmp_path):
    # a slash command and the system prompt field shape the request
    send(page, "/temperature 0.5")
    assert page.locator(".message.notice").inner_text() == "temperature set to 0.5"
    assert page.input_value("#temperature") == "0.5"
    page.click("#settings summary")
    page.fill("#system", "Answer briefly.")
    page.evaluate(WATCH_REPLY)
    send(page, "What is 12 times 7?")
    wait_idle(page)
    assert page.evaluate("window.replyTexts.size") >= 2, "the reply arrived in one piece, not streamed"
    first = page.sent[-1]
    assert first["messages"] == [{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": "What is 12 times 7?"}]
    assert first["temperature"] == 0.5 and first["stream"] is True

    # the model's <script> is text, its Markdown is rendered, its tool call is a calculator box
    reply = page.locator(".message.assistant .body")
    assert "<script>window.pwned = 1</script>" in reply.inner_text()
    assert page.evaluate("window.pwned") is None and page.locator("#messages script").count() == 0
    assert reply.locator("strong").inner_text() == "bold" and reply.locator("pre code").inner_text() == "print(1)"
    assert reply.locator(".tool").inner_text() == "calculator: 12*7 = 84"
    assert "<|python_start|>" not in reply.inner_text()
    page.locator(".message.assistant .copy").click()
    assert "<|output_start|>84" in page.evaluate("navigator.clipboard.readText()")

    # regenerate: the same conversation asked again, one reply on screen
    page.click(".regenerate")
    wait_idle(page)
    assert page.sent[-1]["messages"] == first["messages"] and page.locator(".message.assistant").count() == 1

    # stop: the reply ends where it was and the page is ready for the next message
    send(page, "Count for me")
    page.wait_for_function("() => (document.querySelectorAll('.message.assistant .body')[1] || {}).textContent", timeout=20_000)
    page.click("#stop")
    wait_idle(page)
    stopped = page.locator(".message.assistant").nth(1).inner_text()
    page.wait_for_timeout(300)
    assert page.locator(".message.assistant").nth(1).inner_text() == stopped and "done." + FILLER not in stopped

    # edit the first message: what came after it is replaced by the new exchange
    page.locator(".message.user .edit").first.click()
    page.fill(".editor", "What is 2 plus 2?")
    page.click(".save")
    wait_idle(page)
    assert page.sent[-1]["messages"][1:] == [{"role": "user", "content": "What is 2 plus 2?"}]
    assert page.locator(".message.user").count() == 1 and page.locator(".message.assistant").count() == 1

    screenshot = tmp_path / "chat-phone.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of the chat page at a phone viewport: {screenshot}")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], "the page scrolls sideways"

    send(page, "/help")
    assert "/topk 50" in page.locator(".message.notice").inner_text()
    send(page, "/clear")
    assert page.locator(".message.user, .message.assistant").count() == 0
