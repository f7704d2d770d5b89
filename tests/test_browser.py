"""The chat page in a real headless Chromium: type a message, press send, watch the reply stream in."""
import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the server needs FastAPI (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install -e '.[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

import time  # noqa: E402

from infer_helpers import running_server, tiny_model, tiny_tokenizer  # noqa: E402
from picochat.infer.engine import Engine  # noqa: E402
from picochat.infer.limits import ServeConfig  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package, not Playwright's download
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Records each text the reply shows, so the test can tell a streamed reply from one that arrived whole.
WATCH_REPLY = """() => {
  window.replyTexts = new Set();
  new MutationObserver(() => {
    const reply = document.querySelector('.message.assistant');
    if (reply && reply.textContent) window.replyTexts.add(reply.textContent);
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""


class PacedEngine(Engine):
    """Yields a token every 30 ms, so a loaded machine cannot coalesce the whole stream into one page update."""

    def generate(self, prompt, params):
        for tokens in super().generate(prompt, params):
            time.sleep(0.03)
            yield tokens


@pytest.mark.slow
def test_typed_message_gets_a_streamed_reply_and_new_conversation_clears(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    tok = tiny_tokenizer()
    engine = PacedEngine(tiny_model(tok.vocab_size, max_seq_len=128), tok)
    config = ServeConfig(max_tokens=40, temperature=1.0, top_k=0, seed=0, rate_per_minute=0)
    with running_server(engine, "tiny-test", config) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's screen
            page.goto(url)
            page.evaluate(WATCH_REPLY)
            page.fill("#prompt", "What is 12 times 7?")
            page.click("#send")
            page.wait_for_selector(".message.user")
            page.wait_for_function("() => !document.getElementById('send').disabled", timeout=20_000)
            reply = page.locator(".message.assistant")
            assert reply.count() == 1
            assert reply.inner_text().strip(), "the assistant's reply stayed empty"
            assert page.evaluate("window.replyTexts.size") >= 2, "the reply arrived in one piece, not streamed"
            page.click("#new-chat")
            assert page.locator(".message").count() == 0
        finally:
            browser.close()
