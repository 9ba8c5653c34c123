"""The playground page in a real browser (Playwright driving Debian's chromium): it asks for the API
key, keeps it in localStorage, shows the model card (one click from the header), streams a reply
token by token and draws the reply's attention map."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from graft.data.tokenizer import Tokenizer

from .conftest import MODEL_NAME, build, live_server, slow_down, tiny_model

CHROMIUM = Path("/usr/bin/chromium")
KEY = "sk-playground"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed at /usr/bin/chromium "
        "(apt-get install chromium; .ci/run installs it)",
    ),
]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Test-side instrumentation: every change to the assistant's text, as the page renders it.
RECORD_TEXT_LENGTHS = """
window.__lengths = [];
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver(() => {
    const bubble = document.querySelector(".message.assistant");
    const text = bubble && bubble.firstChild;
    if (text && text.nodeType === Node.TEXT_NODE) window.__lengths.push(text.textContent.length);
  }).observe(document.body, { childList: true, subtree: true, characterData: true });
});
"""


@pytest.fixture(scope="module")
def url(tokenizer: Tokenizer) -> Iterator[str]:
    model = tiny_model(tokenizer)
    slow_down(model, 0.02)  # 20 ms a token: a reply arrives over a second, in many reads
    served = build(tokenizer, model, api_key=KEY)
    with live_server(served.app) as base:
        yield base
    served.engine.stop()


def test_the_playground_streams_a_reply(url: str, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.add_init_script(RECORD_TEXT_LENGTHS)
            problems: list[str] = []  # console errors, failed requests and 4xx/5xx answers
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.on(
                "response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}")
            )
            page.goto(url)
            expect(page.locator("#model-name")).to_have_text(
                "enter the API key →"
            )  # 401 without it
            page.fill("#api-key", KEY)
            page.locator("#api-key").dispatch_event("change")
            expect(page.locator("#model-name")).to_have_text(MODEL_NAME)
            expect(page.locator("#card")).to_contain_text("A causal language model")
            page.fill("#seed", "7")
            page.fill("#max-tokens", "40")
            page.fill("#prompt", "the quick brown fox")
            page.click("#send")
            expect(page.locator(".message.user")).to_have_text("the quick brown fox")
            expect(page.locator(".message.assistant .meta")).to_contain_text(
                "finish:", timeout=30_000
            )

            lengths = page.evaluate("window.__lengths")
            grew = sorted(set(lengths))
            assert len(grew) >= 3, f"the reply did not arrive in pieces: {lengths}"
            assert lengths == sorted(lengths), "the reply's text shrank while streaming"
            shown = page.locator(".message.assistant").evaluate("e => e.firstChild.textContent")

            # What the page showed is what the API gives for the same request, not streamed.
            reply = httpx.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {KEY}"},
                json={
                    "model": MODEL_NAME,
                    "messages": [{"role": "user", "content": "the quick brown fox"}],
                    "temperature": 0.8,
                    "top_p": 1,
                    "seed": 7,
                    "max_tokens": 40,
                },
                timeout=30,
            ).json()
            assert shown == reply["choices"][0]["message"]["content"]
            assert len(grew) <= reply["usage"]["completion_tokens"]

            # The reply's attention map: drawn on a canvas, rollout first, then the last layer.
            problems.clear()  # the 401 before the key was given is expected
            page.click(".message.assistant .attention > button")
            canvas = page.locator(".message.assistant .attention-map canvas")
            expect(canvas).to_have_attribute("data-drawn", "rollout", timeout=10_000)
            inked = "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data" + (
                ".some((v, i) => i % 4 < 3 && v < 200)"
            )
            assert canvas.evaluate(inked), "the attention map is blank"
            page.click(".message.assistant .attention-map button")
            expect(canvas).to_have_attribute("data-drawn", "last_layer")
            expect(page.locator(".attention-map figcaption")).to_contain_text("last layer")
            page.screenshot(path=tmp_path / "attention.png")
            assert (tmp_path / "attention.png").stat().st_size > 0
            assert not problems, problems

            # The header's link opens the model card, even when its section was closed.
            page.locator("#card").evaluate("e => { e.closest('details').open = false; }")
            page.click("#card-link")
            assert page.locator("#card").evaluate("e => e.closest('details').open")
            expect(page.locator("#card")).to_be_in_viewport()

            # The key survives a reload, from localStorage.
            page.reload()
            expect(page.locator("#model-name")).to_have_text(MODEL_NAME)
            assert page.input_value("#api-key") == KEY
        finally:
            browser.close()
