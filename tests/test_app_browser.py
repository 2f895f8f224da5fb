"""The app in a real browser: `streamlit run` on a free localhost port, driven by headless Chromium.

Needs Debian's `chromium` package and the `playwright` Python package (its own browser download is never
used); skips when either is missing. The screenshot goes to out/app.png, or to $LONGHEADS_SCREENSHOT
(the README's docs/screenshot.png is made with LONGHEADS_SCREENSHOT=docs/screenshot.png and a long PDF
given in $LONGHEADS_APP_PDF with its question in $LONGHEADS_APP_QUESTION).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "longheads_app" / "app.py"
PDF = Path(os.environ.get("LONGHEADS_APP_PDF", APP.parent / "samples" / "eddystone.pdf"))
QUESTION = os.environ.get("LONGHEADS_APP_QUESTION", "Who designed the second lighthouse?")
SCREENSHOT = ROOT / os.environ.get("LONGHEADS_SCREENSHOT", "out/app.png")
ANSWER_TOKENS = os.environ.get("LONGHEADS_APP_ANSWER_TOKENS", "40")
# Milliseconds. CPU runs share their cores with other work; a long PDF raises it through the environment.
SLOW = int(os.environ.get("LONGHEADS_APP_TIMEOUT_S", "900")) * 1000
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = os.environ.get("LONGHEADS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("no Chromium: install Debian's package (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Skip before starting a server that no browser could drive.
    chromium()
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "streamlit", "run", str(APP),
                "--server.headless=true", f"--server.port={port}", "--server.address=127.0.0.1",
                "--server.fileWatcherType=none", "--browser.gatherUsageStats=false",
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.read() == b"ok":
                            break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture
def browser(app_url: str) -> Iterator:
    """Headless Debian Chromium driven by Playwright (app_url has already skipped if either is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_ask_stream_stop_and_heads_view(app_url: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 2100})
    page.set_default_timeout(SLOW)
    run(page, app_url)


def test_two_sessions_at_once(app_url: str, browser) -> None:
    """Two tabs ask at the same time: both get answers, each sees only its own chat."""
    tabs = [browser.new_page(viewport={"width": 1280, "height": 1400}) for _ in range(2)]
    for tab in tabs:
        tab.set_default_timeout(SLOW)
        open_with_pdf(tab, app_url, APP.parent / "samples" / "eddystone.pdf", answer_tokens="16")
    questions = ["Who built the first lighthouse?", "What was the lantern made of?"]
    for tab, question in zip(tabs, questions, strict=True):
        ask(tab, question)
    for tab, question, other in zip(tabs, questions, reversed(questions), strict=True):
        tab.get_by_text("from the document cache").wait_for()
        chat = tab.locator("[data-testid='stChatMessage']")
        assert chat.count() == 2
        assert question in chat.nth(0).inner_text()
        assert other not in tab.locator("body").inner_text(timeout=10_000)


def open_with_pdf(page, url: str, pdf: Path, answer_tokens: str) -> None:
    page.goto(url)
    # The first visit loads the model; the sidebar reports it once loaded.
    page.get_by_text("max context").wait_for()
    page.get_by_role("spinbutton", name="Answer length (max new tokens)", exact=True).fill(answer_tokens)
    page.get_by_role("button", name="Apply").click()
    wait_idle(page)
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(pdf))
    page.locator("[data-testid='stMetricLabel']").filter(has_text="Tokens").wait_for()
    wait_idle(page)


def run(page, url: str) -> None:
    open_with_pdf(page, url, PDF, ANSWER_TOKENS)
    page.get_by_role("button", name="Encode the document").click()
    page.get_by_text("Encoded ").wait_for()

    # The answer streams: the last chat message grows, with a cursor, before its final form.
    ask(page, QUESTION)
    answer = page.locator("[data-testid='stChatMessage']").nth(1)
    partials = watch_stream(answer)
    assert len(set(partials)) >= 2, f"no streaming seen: {partials}"
    page.get_by_text("from the document cache").wait_for()
    final = answer.inner_text()
    assert "▌" not in final and final.strip()

    # The heads' view of this answer: the strip over the document and the layer x head grid.
    page.get_by_text("Where the heads looked").wait_for()
    charts = page.locator("[data-testid='stVegaLiteChart']")
    charts.nth(1).wait_for()
    # Documents longer than the heads' window rank passages beyond a neutral question's reads.
    page.get_by_text(re.compile(r"^(Most read passages|Passages read most for this question)$")).wait_for()
    page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg").first.wait_for()
    wait_idle(page)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    # A click on the strip picks that chunk for the layer x head grid, rerunning only the heads' view.
    picker = page.get_by_role("combobox", name="Chunk", exact=True)
    before = picker.input_value()
    box = charts.nth(0).bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + 38)
    deadline = time.monotonic() + 30
    while picker.input_value() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert picker.input_value() != before, "a click on the strip did not pick its chunk"

    # Stop: a click ends generation mid-answer and keeps what was written.
    ask(page, "Tell me the whole history of the lighthouse, tower by tower.")
    streaming = page.locator("[data-testid='stChatMessage']").nth(3)
    watch_stream(streaming, until_partials=1)
    streaming.get_by_role("button", name="Stop").click()
    page.get_by_text("Stopped before the end").wait_for()
    assert streaming.inner_text().strip()
    assert page.locator("[data-testid='stException']").count() == 0


def ask(page, question: str) -> None:
    box = page.locator("[data-testid='stChatInputTextArea']")
    box.fill(question)
    box.press("Enter")


def watch_stream(message, until_partials: int = 0) -> list[str]:
    """Texts of a streaming message seen while its cursor shows; stops after `until_partials` (0: the end)."""
    seen: list[str] = []
    deadline = time.monotonic() + SLOW / 1000
    started = False
    while time.monotonic() < deadline:
        try:
            text = message.inner_text(timeout=1000)
        except Exception:  # noqa: BLE001 - the message is re-rendered between polls
            text = ""
        if "▌" in text:
            started = True
            if text.replace("▌", "").strip() and (not seen or seen[-1] != text):
                seen.append(text)
            if until_partials and len(seen) >= until_partials:
                return seen
        elif started:
            return seen
        time.sleep(0.1)
    return seen


def wait_idle(page) -> None:
    """Until Streamlit's run finishes (the status widget goes away)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=SLOW)
    time.sleep(0.5)
