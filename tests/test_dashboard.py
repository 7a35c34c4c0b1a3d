"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright, on a real uvicorn.

The database is filled the way the daemon fills it: digits predictions replayed through the pipeline (clean
windows, two windows of corrupted inputs, clean again, one more corrupted window, with two hostile malformed
messages among them), then the alert engine turns the stored results into alerts. So the charts show real
statistics, thresholds and p-values, the alerts are real (one episode resolved, one firing), the dead letters
are what intake really stores, and the live alert is opened by the engine while the page is open.

Without chromium (or the ``playwright`` package) the browser tests skip, or fail under
SENTINEL_REQUIRE_SERVICES=1. A screenshot of the page is saved to tests/artifacts/dashboard.png; with
SENTINEL_UPDATE_SCREENSHOT=1 it also replaces docs/img/dashboard.png (the README's).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.alerting.lifecycle import AlertEngine
from monitor.alerting.settings import AlertingSettings
from monitor.api.app import create_app
from monitor.api.dashboard import CONTENT_SECURITY_POLICY
from monitor.api.server import ApiServer
from monitor.api.settings import ApiSettings
from monitor.cli import replay
from storage import AlertStore, Store, make_engine, migrate
from tests.conftest import service_unavailable
from tests.helpers import MODEL, T0, make_config, to_jsonl, windowed_traffic, write_reference
from tests.stored_state import alert_states

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "tests" / "artifacts" / "dashboard.png"
README_SCREENSHOT = ROOT / "docs" / "img" / "dashboard.png"
READ, ADMIN = "dash-read-token", "dash-admin-token"
# Each part is a malformed message from the broker, stored as a dead letter and shown on the page.
SCRIPT_PAYLOAD = b"<script>window.__pwned = 'script'</script>"
IMG_PAYLOAD = b'{"model": "<img src=x onerror=\\"window.__pwned = \'img\'\\">", "type": "prediction"}'
# Clean, corrupted inputs, clean (the engine resolves after 2 clean windows), corrupted again.
PLAN = [False, False, True, True, False, False, False, True]
LIVE_PLAN = [False, False, True]  # while the page is open: the firing episode resolves, a new one opens
WINDOW = 60.0
TIMEOUT_MS = 15_000


@dataclass
class Monitored:
    store: Store
    alerts: AlertStore
    engine: AlertEngine
    config: Any
    workdir: Path


def run_traffic(monitored: Monitored, plan: list[bool], *, first_window: int, prefix: str) -> None:
    """Replay ``plan`` (one window each) through the pipeline, then let the alert engine process it."""
    events: list[dict[str, Any] | bytes] = list(
        windowed_traffic(plan, start=T0 + first_window * WINDOW, prefix=prefix)
    )
    if first_window == 0:
        events[40:40] = [SCRIPT_PAYLOAD, IMG_PAYLOAD]
    source = to_jsonl(monitored.workdir / f"{prefix}.jsonl", events)
    assert replay(source, monitored.config, out=io.StringIO()) == 0
    monitored.engine.run_once()


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    workdir = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{workdir / 'sentinel.db'}"
    # Every default detector; a shorter VAE training than the default only to keep the module fast.
    config = make_config(
        url,
        reference=write_reference(workdir / "reference.jsonl"),
        detectors={"vae_anomaly": {"max_epochs": 20}},
    )
    engine = make_engine(url)
    migrate(engine)
    alerts = AlertStore(engine)
    state = Monitored(
        Store(engine), alerts, AlertEngine(alerts, AlertingSettings(resolve_after=2)), config, workdir
    )
    run_traffic(state, PLAN, first_window=0, prefix="w")
    yield state
    engine.dispose()


@contextmanager
def serving(monitored: Monitored, settings: ApiSettings | None = None, page: Any = None) -> Iterator[str]:
    """A real uvicorn server for the API and the dashboard; yields its base URL.

    ``page`` is taken off the dashboard before the server stops, so its open alert stream ends cleanly.
    """
    app = create_app(monitored.store, monitored.alerts, settings or ApiSettings(), stream_poll_interval=0.2)
    server = ApiServer(app, "127.0.0.1", 0, graceful_timeout=1)
    server.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{server.port}"
    finally:
        if page is not None:
            page.goto("about:blank")
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        service_unavailable(f"chromium not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_unavailable("the playwright package is not installed (pip install playwright==1.65.2)")
    with sync_playwright() as p:
        try:
            instance = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        except Exception as exc:  # playwright's Error: the binary does not start here
            service_unavailable(f"chromium at {CHROMIUM} does not start headless: {exc}")
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context per test (its own sessionStorage); fails the test on any script error."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    # Chromium also logs every non-2xx response as a console error; the 401s before a token is entered are
    # expected, so only the page script's own errors count here.
    tab.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield tab
    context.close()
    assert errors == [], errors


def open_dashboard(page: Any, base: str) -> None:
    page.goto(base + "/")  # the redirect to /dashboard is part of what is tested
    page.wait_for_selector("body[data-loaded='true']")


def stored_results(monitored: Monitored) -> dict[str, list[Any]]:
    by_detector: dict[str, list[Any]] = {}
    for r in monitored.store.window_results(model=MODEL, limit=1000):
        by_detector.setdefault(r.detector, []).append(r)
    return by_detector


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# ------------------------------------------------------------------------------------ without a browser


def test_page_and_assets_are_served_without_a_token_and_with_a_policy(monitored: Monitored) -> None:
    with serving(monitored, ApiSettings(read_tokens=[READ])) as base:
        root = httpx.get(base + "/", follow_redirects=False, timeout=5)
        assert (
            root.status_code == 307
            and httpx.URL(base + "/").join(root.headers["location"]).path == "/dashboard"
        )
        page = httpx.get(base + "/dashboard", timeout=5)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert (
            "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
        )
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            asset = httpx.get(f"{base}/dashboard/static/{name}", timeout=5)
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        # Only the three files: no other name, and no path outside the static folder.
        for bad in ("dashboard.html", "app.py", "..%2Fapp.py", "%2E%2E%2Fdashboard.py"):
            assert httpx.get(f"{base}/dashboard/static/{bad}", timeout=5).status_code == 404, bad
        # The page holds no data; the data still needs the token.
        assert httpx.get(base + "/v1/models", timeout=5).status_code == 401
        headers = {"Authorization": f"Bearer {READ}"}
        assert httpx.get(base + "/v1/models", headers=headers, timeout=5).status_code == 200
        assert "/dashboard" not in httpx.get(base + "/openapi.json", headers=headers, timeout=5).text


# ------------------------------------------------------------------------------------ in the browser


def test_each_detector_has_a_chart_of_its_stored_windows_with_threshold_and_alerts(
    monitored: Monitored, page: Any
) -> None:
    results = stored_results(monitored)
    with serving(monitored, page=page) as base:
        open_dashboard(page, base)
        assert page.eval_on_selector_all("#model-select option", "os => os.map(o => o.value)") == [MODEL]
        page.select_option("#model-select", MODEL)
        page.wait_for_selector("body[data-loaded='true']")

        shown = page.eval_on_selector_all("figure.chart", "fs => fs.map(f => f.dataset.detector)")
        assert shown == sorted(results)
        for detector, rows in results.items():
            figure = page.locator(f"figure.chart[data-detector='{detector}']")
            with_statistic = [r for r in rows if finite(r.statistic)]
            chart = figure.locator("svg.chart-svg")
            assert chart.get_attribute("data-points") == str(len(with_statistic))
            assert chart.locator("circle.point").count() == len(with_statistic)
            # Each alerting window is marked: a band over the window and a red point.
            alerting = [r for r in rows if r.status == "alert"]
            assert chart.locator("rect.alert-band").count() == len(alerting), detector
            assert chart.locator("circle.point.status-alert").count() == len(alerting), detector
            if any(finite(r.threshold) for r in rows):
                points = chart.locator("polyline.threshold").get_attribute("points") or ""
                assert len(points.split()) == 2 * sum(finite(r.threshold) for r in rows)
            with_p = [r for r in rows if finite(r.p_value)]
            assert figure.locator("svg.pvalue-svg circle.pvalue").count() == len(with_p)
            # The latest window's figures are in the caption, as stored.
            latest = max(rows, key=lambda r: r.window_start)
            assert latest.status in (figure.locator("figcaption .badge").text_content() or "")

        # The corrupted windows do alert on this real traffic (else the marks above prove nothing).
        assert sum(r.status == "alert" for rows in results.values() for r in rows) >= 3
        anomalies = monitored.store.anomalies(model=MODEL, limit=20)
        assert page.locator("#anomalies tr.anomaly-row").count() == len(anomalies) > 0
        assert page.locator("#anomalies tr.anomaly-row code").first.text_content() == anomalies[0].event_id

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        if os.environ.get("SENTINEL_UPDATE_SCREENSHOT") == "1":
            README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SCREENSHOT, README_SCREENSHOT)


def test_alerts_list_and_timeline_show_stored_alerts_and_a_click_shows_details(
    monitored: Monitored, page: Any
) -> None:
    stored = sorted(
        (a for a in alert_states(monitored.alerts) if a.model == MODEL),
        key=lambda a: a.id or 0,
        reverse=True,
    )
    # The plan gives both kinds: the first episode resolved after two clean windows, the last one fires.
    assert {a.state for a in stored} == {"firing", "resolved"}
    with serving(monitored, page=page) as base:
        open_dashboard(page, base)
        rows = page.locator("#alerts tr.alert-row")
        assert rows.evaluate_all("rs => rs.map(r => Number(r.dataset.alertId))") == [a.id for a in stored]
        assert [t.split() for t in rows.locator("td:nth-child(1)").all_text_contents()] == [
            [a.state] for a in stored
        ]
        assert rows.locator("td:nth-child(2)").all_text_contents() == [a.severity for a in stored]
        bars = page.locator("#alert-timeline rect.alert-bar")
        shown_bars = bars.evaluate_all("bs => bs.map(b => Number(b.dataset.alertId))")
        assert sorted(shown_bars) == sorted(a.id or 0 for a in stored)
        for a in stored:
            assert "state-" + a.state in (
                bars.and_(page.locator(f"[data-alert-id='{a.id}']")).get_attribute("class") or ""
            )

        firing = next(a for a in stored if a.state == "firing")
        page.locator(f"#alert-timeline rect[data-alert-id='{firing.id}']").click()
        detail = page.locator("#alert-detail")
        detail.locator("dd", has_text=firing.fingerprint).wait_for()
        assert firing.title in (detail.locator("h3").text_content() or "")
        assert json.loads(detail.locator("pre").text_content() or "") == firing.details

        resolved = next(a for a in stored if a.state == "resolved")
        rows.and_(page.locator(f"[data-alert-id='{resolved.id}']")).click()
        detail.locator("dd", has_text=resolved.fingerprint).wait_for()


def test_hostile_dead_letters_are_shown_as_text_and_never_run(monitored: Monitored, page: Any) -> None:
    stored = monitored.store.dead_letters(limit=50)
    assert {bytes(d.raw) for d in stored} == {SCRIPT_PAYLOAD, IMG_PAYLOAD}
    with serving(monitored, page=page) as base:
        open_dashboard(page, base)
        payloads = page.locator("#dead-letters code.payload").all_text_contents()
        assert sorted(payloads) == sorted(p.decode() for p in (SCRIPT_PAYLOAD, IMG_PAYLOAD))
        reasons = page.locator("#dead-letters td.reason").all_text_contents()
        assert reasons == [d.reason for d in stored]
        # Shown as characters, not parsed into elements, and nothing ran.
        assert page.locator("#dead-letters script, #dead-letters img").count() == 0
        assert page.locator("img").count() == 0
        assert page.evaluate("typeof window.__pwned") == "undefined"


def test_a_new_alert_appears_live_without_reloading(monitored: Monitored, page: Any) -> None:
    before = {a.id for a in alert_states(monitored.alerts)}
    with serving(monitored, page=page) as base:
        open_dashboard(page, base)
        page.wait_for_selector("#live-status.live-live")
        page.evaluate("window.__sameDocument = true")
        charted = int(page.locator("svg.chart-svg").first.get_attribute("data-points") or 0)

        # The daemon's work while the page is open: three more windows, the last with corrupted inputs.
        run_traffic(monitored, LIVE_PLAN, first_window=len(PLAN), prefix="live")
        opened = [a for a in alert_states(monitored.alerts) if a.id not in before]
        assert opened, "the corrupted window opened no alert"

        for alert in opened:
            page.wait_for_selector(f"#alerts tr.alert-row[data-alert-id='{alert.id}']")
        page.wait_for_function(
            "n => Number(document.querySelector('svg.chart-svg').dataset.points) > n", arg=charted
        )
        # Resolutions are on the stream too: the episode that was firing shows as resolved.
        for alert in alert_states(monitored.alerts):
            if alert.id in before and alert.state == "resolved":
                page.wait_for_selector(f"#alerts tr.alert-row.state-resolved[data-alert-id='{alert.id}']")
        assert page.evaluate("window.__sameDocument") is True  # the same document: no reload happened


def test_with_tokens_the_page_asks_for_one_and_works_with_the_read_token(
    monitored: Monitored, page: Any
) -> None:
    with serving(monitored, ApiSettings(read_tokens=[READ], admin_tokens=[ADMIN]), page) as base:
        page.goto(base + "/dashboard")
        form = page.locator("#auth-form")
        form.wait_for(state="visible")
        assert page.locator("figure.chart").count() == 0

        page.fill("#token-input", "not-a-token")
        page.click("#auth-form button[type=submit]")
        page.wait_for_function("document.getElementById('auth-message').textContent.includes('rejected')")
        assert form.is_visible()

        page.fill("#token-input", READ)
        page.click("#auth-form button[type=submit]")
        page.wait_for_selector("figure.chart")
        assert not form.is_visible()
        assert page.locator("#alerts tr.alert-row").count() == len(
            [a for a in alert_states(monitored.alerts) if a.model == MODEL]
        )
        # The stream authenticates with the same header (EventSource could not send it).
        page.wait_for_selector("#live-status.live-live")
        assert page.evaluate("sessionStorage.getItem('sentinel.token')") == READ


def test_stream_parser_follows_the_event_stream_format(monitored: Monitored, page: Any) -> None:
    chunks = [
        "\ufeffretry: 1500\r",  # a CRLF split across two chunks
        '\n\n: keepalive\n\nid: 7-0-0\nevent: alert\ndata: {"a":',
        "1}\ndata: second line\r\n\r\n",
        # An id with a NUL is ignored; an event without data is not dispatched.
        "data: no id field\n\nid: bad\0id\ndata:x\n\nevent: alert\n\n",
        "data: unterminated",
    ]
    with serving(monitored, page=page) as base:
        open_dashboard(page, base)
        got = page.evaluate(
            """chunks => {
                const events = [];
                const parser = new window.SentinelDashboard.SseParser(e => events.push(e));
                for (const chunk of chunks) parser.feed(chunk);
                return {events, retry: parser.retry};
            }""",
            chunks,
        )
    assert got == {
        "events": [
            {"type": "alert", "data": '{"a":1}\nsecond line', "lastEventId": "7-0-0"},
            {"type": "message", "data": "no id field", "lastEventId": "7-0-0"},
            {"type": "message", "data": "x", "lastEventId": "7-0-0"},
        ],
        "retry": 1500,
    }


def test_an_empty_database_shows_empty_states(tmp_path: Path, page: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    migrate(engine)
    alerts = AlertStore(engine)
    empty = Monitored(Store(engine), alerts, AlertEngine(alerts, AlertingSettings()), None, tmp_path)
    try:
        with serving(empty, page=page) as base:
            open_dashboard(page, base)
            assert page.locator("#models-empty").is_visible()
            assert page.locator("#model-select").is_disabled()
            assert "No dead letters" in (page.locator("#dead-letters").text_content() or "")
            assert page.locator("figure.chart, #alerts tr").count() == 0
    finally:
        engine.dispose()
