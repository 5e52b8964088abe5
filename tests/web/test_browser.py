"""The dashboard in a real headless Chromium (Selenium + Debian's chromium-driver): next fire
times in Europe/Berlin, a run's live progress, Run now with a parameter and its email with
the chart loaded, a failed run's cell, the token off loopback, and hostile notebook HTML that
cannot run script in the dashboard's origin. Screenshots go to the test's folder (and to
$NOTIFIER_SCREENSHOTS when set)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chrome, require_browser, screenshot
from conftest import wait_until
from webproject import Project, ServeFactory, project_fixture, serve_fixture  # noqa: F401 - fixtures

from notifier.jobs import load_jobs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def driver() -> Iterator:
    require_browser()
    browser = chrome()
    yield browser
    browser.quit()


def by(driver, css: str):  # noqa: ANN001, ANN201
    return driver.find_element("css selector", css)


def test_jobs_page_shows_next_fire_times_of_a_cron_job_in_berlin(
    project: Project,
    serve: ServeFactory,
    driver,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    web = serve(project)
    driver.set_window_size(1400, 1000)
    driver.get(web.url + "/")
    times = [
        t.get_attribute("datetime")
        for t in driver.find_elements("css selector", "#job-report td.next time")
    ]
    job = load_jobs(project.jobs).get("report")
    expected = [t.isoformat() for t in job.next_fire_times(count=5)]
    assert times == expected
    # 08:30 in Berlin, whatever the season: +01:00 in winter, +02:00 in summer
    assert all(t[11:16] == "08:30" and t[-6:] in ("+01:00", "+02:00") for t in times)
    texts = [t.text for t in driver.find_elements("css selector", "#job-report td.next time")]
    assert all(text.endswith(("CET", "CEST")) for text in texts)
    assert "at 08:30, on Monday to Friday" in by(driver, "#job-report").text
    screenshot(driver, tmp_path, "jobs")


def _cell(driver) -> str:  # noqa: ANN001
    try:
        return by(driver, "#progress .cell").text
    except Exception:  # noqa: BLE001 - the page is reloading
        return ""


def test_run_now_shows_live_progress_then_the_email_with_its_chart(
    project: Project,
    serve: ServeFactory,
    driver,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    web = serve(project)
    driver.set_window_size(1400, 1000)
    driver.get(web.url + "/jobs/report/run")
    for name, value in (("p.threshold", "42"), ("p.pause", "2")):
        field = by(driver, f"input[name='{name}']")
        field.clear()
        field.send_keys(value)
    dry = by(driver, "input[name='dry_run']")
    if not dry.is_selected():
        dry.click()
    by(driver, "form.runform button[type=submit]").click()
    wait_until(lambda: "/runs/" in driver.current_url, 30, "the run's page")
    run_id = driver.current_url.rsplit("/", 1)[1]
    driver.execute_script("window.notReloaded = true")
    # the progress line changes in place (no reload): cell i of 5 for several i
    seen: set[str] = set()

    def progressed() -> bool:
        text = _cell(driver)
        if re.fullmatch(r"cell \d of 5", text):
            seen.add(text)
        return len(seen) >= 2

    wait_until(progressed, 90, "two different cells in the progress line", interval=0.2)
    assert driver.execute_script("return window.notReloaded === true")
    assert re.search(r"elapsed \d+ s", by(driver, "#progress .elapsed").text)
    # meanwhile the runs page lists it as running
    first = driver.current_window_handle
    driver.switch_to.new_window("tab")
    driver.get(web.url + "/runs")
    row = by(driver, f"tr[data-run-id='{run_id}']")
    assert "running" in row.text or "delivering" in row.text or "succeeded" in row.text
    running_seen = "running" in row.text
    driver.close()
    driver.switch_to.window(first)
    assert running_seen, "the run had finished before the runs page was read"
    # the page reloads itself when the run ends, and shows the email as it went out
    wait_until(
        lambda: "succeeded" in by(driver, "h1").text, 120, "the run to succeed", interval=0.5
    )
    assert "Threshold 42 demo" in driver.page_source
    frame = by(driver, "iframe.mailbody")
    driver.execute_script("arguments[0].scrollIntoView()", frame)
    driver.switch_to.frame(frame)
    try:
        wait_until(
            lambda: driver.execute_script(
                "var i = document.querySelector('img[src^=\"data:image/png\"]');"
                "return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0"
            ),
            30,
            "the inline chart to load",
        )
        assert "threshold" in driver.find_element("tag name", "body").text
    finally:
        driver.switch_to.default_content()
    assert "data.csv" in by(driver, "p.files").text
    screenshot(driver, tmp_path, "run")


def test_a_failed_run_shows_the_error_and_the_failing_cell(
    project: Project,
    serve: ServeFactory,
    driver,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    web = serve(project)
    driver.set_window_size(1400, 1000)
    driver.get(f"{web.url}/runs/{project.failed.run_id}")
    failure = by(driver, "#failure").text
    assert "the data is late" in failure
    assert "Failing cell: cell 3" in failure
    assert "raise ValueError('the data is late')" in by(driver, "#failure pre.source").text
    screenshot(driver, tmp_path, "failed")


def test_the_token_is_required_on_a_non_loopback_bind(
    project: Project,
    driver,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    log = tmp_path / "web.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "notifier",
                "web",
                "jobs.yaml",
                "--host",
                "0.0.0.0",
                "--port",
                "0",
            ],
            cwd=project.root,
            env=project.env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        found = wait_until(
            lambda: re.search(r"dashboard: (http://\S+)\?token=(\S+)", log.read_text()),
            60,
            "the URL with its token",
        )
        base, token = found.group(1), found.group(2)
        assert "a token was generated" in log.read_text()
        driver.get(base)
        assert "needs its token" in by(driver, "h1").text
        assert token not in driver.page_source
        driver.get(f"{base}?token={token}")
        wait_until(lambda: driver.find_elements("css selector", "#job-report"), 30, "the jobs")
        assert "token" not in driver.current_url  # swapped for a cookie
        cookie = next(c for c in driver.get_cookies() if c["name"].startswith("notifier_auth_"))
        assert cookie["httpOnly"] and cookie["value"] != token
        driver.get(base + "runs")
        assert by(driver, "h1").text.startswith("Runs")
        driver.delete_all_cookies()
        driver.get(base + "runs")
        assert "needs its token" in by(driver, "h1").text
    finally:
        proc.terminate()
        proc.wait(30)


def test_script_in_an_output_notebook_does_not_run_in_the_dashboard_origin(
    project: Project,
    serve: ServeFactory,
    driver,  # noqa: ANN001
) -> None:
    web = serve(project)
    driver.set_window_size(1400, 1000)
    driver.get(f"{web.url}/runs/{project.ok.run_id}")
    title = driver.title
    time.sleep(1.5)  # give the frames' (blocked) script and onerror handler time to run
    assert driver.title == title and "pwned" not in driver.title
    assert driver.execute_script("return typeof window.pwned") == "undefined"
    for css in ("iframe.output", "iframe.mailbody"):
        frame = by(driver, css)
        driver.execute_script("arguments[0].scrollIntoView()", frame)
        driver.switch_to.frame(frame)
        try:
            wait_until(
                lambda: driver.execute_script("return document.readyState") == "complete",
                30,
                "the frame to load",
            )
            assert "<script>" in driver.page_source or "evil" in driver.page_source
            body = driver.find_element("tag name", "body")
            assert body.get_attribute("data-ran") is None, css  # no script
            assert body.get_attribute("data-onerror") is None, css  # no inline handler
            # an opaque origin: it cannot read the dashboard's cookies or call its API
            assert driver.execute_script("return window.origin") == "null"
        finally:
            driver.switch_to.default_content()
    assert driver.title == title
