"""The operator page in a real browser: Debian's chromium, driven by Selenium through Debian's
chromedriver, against a real controller, router and model servers."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import TrainedRegistry
from tests.helpers import wait_until
from tests.systems import System, call_json, copied_registry, running_system
from training.dataset import DEFAULT_PATH, FEATURES, load_dataset
from training.pipelines import ModelKind
from training.train import TrainOptions, train_and_register

pytestmark = pytest.mark.slow  # real MLflow, model servers or whole systems

if TYPE_CHECKING:  # selenium itself is imported when a test runs
    from selenium.webdriver.remote.webdriver import WebDriver

NONE = "\u2013"
"""What the page shows for a number it does not have yet (an en dash)."""
SCREENSHOT_ENV = "MLCANARY_PAGE_SCREENSHOT"
"""Where the rollout test also writes its screenshot (the README's image is made so)."""


@pytest.fixture
def system(trained_registry: TrainedRegistry, tmp_path: Path) -> Iterator[System]:
    """v1 stable, v2 the canary at 50%."""
    folder = tmp_path / "registry"
    folder.mkdir()
    with running_system(copied_registry(trained_registry.settings, folder), tmp_path) as built:
        code, answer = built.admin("POST", "/api/deploy", {"version": "2", "weight": 50})
        assert code == 200, answer
        yield built


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless chromium at a laptop's size (the Makefile's system-deps install both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("chromium and chromedriver are needed: `make system-deps` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for errors
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1500"):  # fmt: skip
        options.add_argument(argument)
    started = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield started
    finally:
        started.quit()


@contextmanager
def traffic(system: System) -> Iterator[list[int]]:
    """Send dataset rows through the router from a thread until the block ends."""
    rows = load_dataset(DEFAULT_PATH)[list(FEATURES)].to_dict(orient="records")
    statuses: list[int] = []
    stop = threading.Event()

    def send() -> None:
        index = 0
        while not stop.is_set():
            body = json.dumps({"dataframe_records": [rows[index % len(rows)]]}).encode()
            request = urllib.request.Request(
                f"{system.router_url}/invocations", data=body,
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=30) as answer:
                statuses.append(answer.status)
            index += 1

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield statuses
    finally:
        stop.set()
        sender.join(timeout=60)


def _text(browser: WebDriver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.ID, element_id).text)


def _click(browser: WebDriver, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, element_id).click()


def _type(browser: WebDriver, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def _plotted(browser: WebDriver, chart: str, dataset: int) -> float:
    """The last value a chart plots for one of its series (0 before it has any)."""
    script = (f"const d = window.mlcanaryCharts.{chart}.data.datasets[{dataset}].data;"
              " return d.length ? d[d.length - 1].y : 0;")  # fmt: skip
    return float(browser.execute_script(script) or 0)


def _until(condition: Callable[[], Any], what: str) -> None:
    wait_until(lambda: bool(condition()), what, timeout=60)


def test_the_page_shows_the_split_live_traffic_and_refuses_a_wrong_token(
    system: System, browser: WebDriver
) -> None:
    browser.get(f"{system.controller_url}/")
    _until(lambda: _text(browser, "canary-version") == "v2", "the page showing the canary")
    assert _text(browser, "stable-version") == "v1"
    assert _text(browser, "canary-weight") == "50%"
    assert _text(browser, "protocols") == "stable mlflow + v2 · canary mlflow + v2"
    assert "in step" in _text(browser, "routers")
    assert not browser.find_element("id", "rollback").is_enabled()  # read-only without a token

    with traffic(system) as statuses:
        for chart, dataset, what in (("traffic", 0, "stable's"), ("traffic", 1, "the canary's"),
                                     ("latency", 3, "the canary's p99")):  # fmt: skip
            _until(
                lambda c=chart, d=dataset: _plotted(browser, c, d) > 0, f"{what} traffic plotted"
            )
        shown = lambda: _text(browser, "canary-rps") not in (NONE, "0.0")  # noqa: E731
        _until(shown, "the canary's req/s shown")
        _until(lambda: browser.execute_script(
            "return window.mlcanaryCharts.predictions.data.datasets[1].data.length") > 0,
            "the canary's predictions plotted")  # fmt: skip
        labels = browser.execute_script("return window.mlcanaryCharts.predictions.data.labels")
    # Bucket edges cut at quantiles are shown at the model's scale, still told apart.
    edges = [label.removeprefix("≤ ") for label in labels if label.startswith("≤ ")]
    assert edges and len(set(edges)) == len(edges), labels
    assert all(len(edge.partition(".")[2]) <= 2 for edge in edges), labels  # not 24.6675
    assert set(statuses) == {200}
    # Nothing went wrong in the page: no script error, nothing the security policy refused.
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    _type(browser, "token", "not-the-token")
    _click(browser, "use-token")
    _type(browser, "weight", "70")
    _click(browser, "set-weight")
    _until(lambda: "403" in _text(browser, "message"), "the refusal shown")
    assert "PERMISSION_DENIED: the admin token is not valid" in _text(browser, "message")
    assert system.admin("GET", "/api/status")[1]["canary"]["weight"] == 50.0  # nothing changed
    assert "not-the-token" not in browser.current_url
    assert browser.get_cookies() == []

    _click(browser, "forget-token")
    _type(browser, "token", system.token)
    _click(browser, "use-token")
    _type(browser, "reason", "more for the canary")
    _click(browser, "set-weight")
    _until(lambda: _text(browser, "canary-weight") == "70%", "the page showing 70%")
    assert system.admin("GET", "/api/status")[1]["canary"]["weight"] == 70.0
    # What the browser keeps: the token in this tab's session storage, nowhere else.
    kept = browser.execute_script("return sessionStorage.getItem('mlcanary.admin-token')")
    assert kept == system.token and browser.get_cookies() == []
    assert browser.execute_script("return localStorage.length") == 0


def test_the_page_is_open_and_the_api_is_not(system: System) -> None:
    """The page, its assets and what it polls need no token, under a policy that runs no
    script but this origin's; every admin call still does."""
    for path, kind in (("/", "text/html"), ("/page/page.js", "text/javascript"),
                       ("/page/chart.umd.min.js", "text/javascript"),
                       ("/api/overview", "application/json")):  # fmt: skip
        with urllib.request.urlopen(f"{system.controller_url}{path}", timeout=30) as answer:
            assert answer.headers["Content-Type"].startswith(kind), path
            if path != "/api/overview":
                assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
    code, answer = call_json(f"{system.controller_url}/api/status")
    assert code == 401 and answer["error_code"] == "UNAUTHENTICATED"
    code, answer = call_json(f"{system.controller_url}/api/rollback", "POST", {})
    assert code == 401


def test_a_rollout_started_on_the_page_is_shown_then_rolled_back(
    system: System, browser: WebDriver, tmp_path: Path
) -> None:
    # The canary rolled out is a twin of stable (v3): the page's controls are what is tested,
    # so no gate may end the rollout before they are used (v2, another model, would be).
    twin = train_and_register(TrainOptions(kind=ModelKind.linear, alias=""), system.settings)
    code, answer = system.admin("POST", "/api/deploy", {"version": twin.version, "weight": 0})
    assert code == 200, answer
    browser.get(f"{system.controller_url}/")
    _until(lambda: _text(browser, "canary-version") == f"v{twin.version}", "the page loaded")
    _type(browser, "token", system.token)
    _click(browser, "use-token")
    assert browser.find_element("id", "rollback").is_enabled()
    with traffic(system) as statuses:
        _type(browser, "reason", "the page's rollout")
        _type(browser, "steps", "25,50,75,100")
        _type(browser, "interval", "3")
        _type(browser, "min-requests", "5")
        _click(browser, "confirm-promotion")  # held before 100% until confirmed
        _click(browser, "rollout-start")
        _until(lambda: len(browser.find_elements("css selector", "#judgements tbody tr")) >= 2,
               "two judgements shown")  # fmt: skip
        assert "step" in _text(browser, "rollout-summary")
        for button, reason, shown in (("rollout-pause", "hold on", "paused"),
                                      ("rollout-resume", "go on", "running")):  # fmt: skip
            _type(browser, "reason", reason)
            _click(browser, button)
            _until(lambda s=shown: f": {s}," in _text(browser, "rollout-summary"), shown)
        _type(browser, "reason", "dashboards look right")
        _click(browser, "rollout-confirm")
        _until(lambda: "Promotion confirmed by the operator page: dashboards look right"
               in _text(browser, "rollout-summary"), "the confirmation shown")  # fmt: skip
        changes = system.admin("GET", "/api/status")[1]["recent_changes"]
        assert {(c["action"], c["reason"]) for c in changes} >= {
            ("rollout-pause", "hold on"),
            ("rollout-resume", "go on"),
            ("rollout-confirm", "dashboards look right"),
        }
        _until(lambda: _plotted(browser, "traffic", 1) > 0, "the canary's traffic plotted")
        screenshot = tmp_path / "page.png"
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copy(screenshot, os.environ[SCREENSHOT_ENV])

        browser.set_window_size(420, 1500)  # a laptop's split screen: one column, no sideways
        _until(
            lambda: browser.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth"
            ),
            "no overflow",
        )

        _type(browser, "reason", "seen enough")
        _click(browser, "rollback")
        _until(lambda: "roll back: done" in _text(browser, "message"), "the rollback done")
    status = system.admin("GET", "/api/status")[1]
    assert status["canary"]["weight"] == 0.0
    assert all(seen["in_step"] for seen in status["routers"].values())  # the routers confirm
    with urllib.request.urlopen(f"{system.router_url}/health", timeout=10) as answer:
        assert json.loads(answer.read())["config_version"] == status["config_version"]
    _until(lambda: _text(browser, "canary-weight") == "0%", "the page showing 0%")
    assert system.admin("GET", "/api/rollout")[1]["status"] != "running"
    assert set(statuses) == {200}


def _answered(system: System) -> float:
    """Requests the router answered so far, from its /metrics."""
    with urllib.request.urlopen(f"{system.router_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlcanary_requests_total{")
    )


def test_a_page_opened_in_the_middle_of_a_rollout_shows_its_past(
    system: System, browser: WebDriver
) -> None:
    """Nobody watches while a rollout runs: the controller samples its traffic all the same,
    and a page opened later plots it from before the page's first poll."""
    with traffic(system) as statuses:
        code, answer = system.admin(
            "POST", "/api/rollout", {"steps": [10, 100], "interval_s": 600, "min_requests": 5}
        )
        assert code == 200, answer
        started = system.admin("GET", "/api/rollout")[1]["step_started_at"]
        # The history this test is about takes time to make: traffic through 8 s of rollout.
        wait_until(lambda: _answered(system) >= 1000 and time.time() - started >= 8,
                   "8 s of traffic during the rollout", 120)  # fmt: skip
        opened = time.time()
        browser.get(f"{system.controller_url}/")
        _until(lambda: _plotted(browser, "traffic", 0) > 0, "stable's traffic plotted")
        oldest = browser.execute_script(
            "const d = window.mlcanaryCharts.traffic.data.datasets[0].data;"
            " return d.length ? d[0].x : 0;"
        )
        # Points from before the page was opened: sampled while nobody watched.
        assert oldest <= -(time.time() - opened) - 4, oldest
        system.admin("POST", "/api/rollout/abort", {"reason": "seen enough"})
    assert set(statuses) == {200}
