"""The web page in a real headless Chromium, against a real server on a loopback port."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from app.api import create_app
from pipeline.config import Settings
from storage.db import connect
from storage.repository import IncidentRecord, IncidentRepository
from storage.snapshot_files import snapshot_root
from tests.app.conftest import TOKEN, fill

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (make system-deps installs them)",
)


@pytest.fixture
def served(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[str, IncidentRepository, list[IncidentRecord]]]:
    """The app under uvicorn in a thread, on 127.0.0.1 and a port the kernel picked."""
    settings = Settings(data_dir=tmp_path / "data", database={"url": sqlite_url}, api={"user": "alice"})
    engine = connect(sqlite_url)
    repo = IncidentRepository(engine)
    records = fill(repo, snapshot_root(settings.data_dir))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine, token=TOKEN), log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait(lambda: server.started, "uvicorn to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", repo, records
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.dispose()


def _wait(predicate, what: str, timeout: float = 15.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # loopback only: no proxy, and none of Chromium's own calls home (sync, updates, hints, safe browsing)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-proxy-server",
                 "--disable-extensions", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-default-apps", "--disable-client-side-phishing-detection",
                 "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_list_filter_detail_image_and_review(served, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, repo, records = served
    find = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    row_ids = lambda: browser.execute_script(  # noqa: E731  (one call: the list may be replaced in between)
        "return [...document.querySelectorAll('#incident-rows tr')].map((row) => Number(row.dataset.id));")

    browser.get(base + "/")
    _wait(lambda: find("#token-form").is_displayed(), "the sign-in form")
    find("#token-input").send_keys(TOKEN)
    find("#token-save").click()
    _wait(lambda: sorted(row_ids()) == sorted(r.id for r in records), "every incident listed")
    assert find("#list-status").text == f"{len(records)} incident(s)"

    _wait(lambda: len(Select(find("#filter-camera")).options) == 3, "the camera list")
    Select(find("#filter-camera")).select_by_value("lot-east")
    Select(find("#filter-kind")).select_by_visible_text("replay")
    find("#filter-apply").click()
    wanted = [r for r in records if r.camera_id == "lot-east" and r.kind == "replay"]
    _wait(lambda: row_ids() == [r.id for r in reversed(wanted)], "the filtered list, newest first")

    target = wanted[0]  # the incident with a car and a replay media time
    find(f'#incident-rows tr[data-id="{target.id}"]').click()
    _wait(lambda: find("#detail").is_displayed(), "the detail view")
    natural = lambda css: browser.execute_script("const i = document.querySelector(arguments[0]); return i.complete ? i.naturalWidth : 0;", css)  # noqa: E731
    assert _wait(lambda: natural("#detail-snapshot"), "the annotated frame to load") == 320
    assert _wait(lambda: natural("#detail-crop"), "the crop to load") == 64
    assert _wait(lambda: natural("#detail-car"), "the whole-car snapshot to load") == 200
    fields = find("#detail-fields").text
    assert "clip0.mp4" in fields and "0:12.5" in fields

    find("#review-note").send_keys("scrape on the door")
    find("#review-confirmed").click()
    _wait(lambda: find("#review-status").text == "saved: confirmed", "the review to be saved")
    stored = repo.get(target.id)
    assert (stored.verdict, stored.review_note, stored.reviewed_by) == ("confirmed", "scrape on the door", "alice")
    assert "confirmed by alice" in find("#detail-review").text
