"""The supervisor page in a real headless Chromium (Debian's `chromium`, driven by Playwright),
served by `emostream ui` against the real broker while a real worker labels a replayed call
center: two dozen calls (the demo's dialogues) and one customer who gets angry and then calms
down. The angry call's alert must appear on its card, its drill-down must list its utterances,
and the alert must clear. Screenshots go to the test's folder (and to $EMOSTREAM_SCREENSHOTS if
set)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from streams.kafka import ensure_topics
from tests.integration.calls import ESCALATING, scripted
from tests.integration.harness import REPO, WorkerProcess, env_for, free_port, settings_for
from tools.dialogues import Dialogue, read_jsonl
from tools.feed import feed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make setup installs it)"),
]


def call_center(run: str) -> tuple[list[Dialogue], str]:
    demo = read_jsonl(REPO / "demo" / "calls.jsonl")
    calls = []
    for k in range(5):
        for d in demo:
            cid = f"{d.call_id}-{k}-{run}"
            utts = tuple(dataclasses.replace(u, call_id=cid, start_s=1.5 * i, end_s=None, label=None)
                         for i, u in enumerate(d.utterances))  # fmt: skip
            calls.append(Dialogue(call_id=cid, utterances=utts))
    angry = scripted(f"angry-{run}", ESCALATING, 1.5)
    return [angry, *calls], angry.call_id


def test_a_supervisor_sees_an_escalation_raised_and_cleared(services, unique, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    settings = settings_for(services, unique, default_modalities=("text",))
    ensure_topics(settings)
    calls, angry = call_center(unique[:6])
    port = free_port()
    worker = WorkerProcess(settings, tmp_path).start()
    ui_log = (tmp_path / "ui.log").open("wb")
    ui = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "ui", "--port", str(port), "--since", "5"],
        env=env_for(settings), cwd=REPO, stdout=ui_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    shots = [tmp_path]
    if os.environ.get("EMOSTREAM_SCREENSHOTS"):
        shots.append(Path(os.environ["EMOSTREAM_SCREENSHOTS"]))
        shots[-1].mkdir(parents=True, exist_ok=True)

    def screenshot(page, name: str) -> None:  # type: ignore[no-untyped-def]
        page.screenshot(path=str(tmp_path / name), full_page=True)
        for folder in shots[1:]:
            shutil.copy(tmp_path / name, folder / name)

    errors: list[str] = []
    quiet = f"quiet-{unique[:6]}"  # a call whose last utterance was labelled ten minutes ago, and no 'ended'
    try:
        worker.wait_ready()
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", ui, tmp_path / "ui.log")
        _publish_old_event(settings, quiet, age_s=600)
        feeder = threading.Thread(
            target=feed, args=(calls, settings), daemon=True,
            kwargs={"realtime": True, "speed": 1.0, "progress": False, "concurrency": len(calls), "stagger_s": 0.2},
        )  # fmt: skip
        feeder.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/")
            card = page.locator(f'article[data-call="{angry}"]')
            card.locator(".alert").first.wait_for(timeout=90_000)  # raised while the call goes on
            assert "live" in card.inner_text() and int(page.inner_text("#n-alerts")) >= 1
            assert card.get_attribute("class") is not None and "critical" in (card.get_attribute("class") or "")
            assert page.locator("article.call").count() >= 20  # a busy board
            assert page.locator("#list article").first.get_attribute("data-call") is not None
            first_sev = page.locator("#list article").first.get_attribute("class") or ""
            assert "critical" in first_sev or "warning" in first_sev  # alerts on top
            quiet_card = page.locator(f'article[data-call="{quiet}"]')
            assert "quiet 10 min" in quiet_card.inner_text() and "live" not in quiet_card.inner_text()
            assert int(page.inner_text("#n-quiet")) == 1
            cards = page.locator("#list article:not(.ended)")  # ended calls come after it
            assert cards.nth(cards.count() - 1).get_attribute("data-call") == quiet  # after every live call
            screenshot(page, "supervisor-alert.png")
            card.click()
            page.locator("#detail table tbody tr").nth(4).wait_for(timeout=10_000)
            detail = page.inner_text("#detail")
            assert angry in detail and "anger" in detail and "text 1.00" in detail
            # cleared: recovered or ended (an ended call's card then says which alerts it had)
            card.locator(".alert:not(.cleared)").first.wait_for(state="detached", timeout=90_000)
            page.wait_for_timeout(1000)
            assert "cleared" in page.inner_text("#detail .history")
            if "ended" in (card.get_attribute("class") or ""):
                assert "✓ had: customer-anger-rising" in card.inner_text(), card.inner_text()
            screenshot(page, "supervisor-cleared.png")
            browser.close()
        feeder.join(120)
        assert not errors, errors
    finally:
        ui.terminate()
        ui.wait(10)
        ui_log.close()
        worker.stop()


def _publish_old_event(settings, call_id: str, age_s: float) -> None:  # type: ignore[no-untyped-def]
    import time

    from kafka import KafkaProducer

    from tests.unit.test_subscribe import make_event

    producer = KafkaProducer(bootstrap_servers=settings.kafka.brokers)
    event = make_event(call_id=call_id, produced_at=time.time() - age_s)
    producer.send(settings.kafka.topics.emotions, key=call_id.encode(), value=event.to_bytes()).get(timeout=30)
    producer.close()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:  # type: ignore[type-arg]
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"emostream ui not healthy within {timeout:.0f} s: {log.read_text()[-2000:]}")
