"""The dashboard in headless Chromium against `haven sim serve` (a simulated cluster).

The page loads and shows hosts and VMs; a drain clicked in the page moves the VMs in the page;
powering a host off through the simulation changes the pet's mood. Screenshots go to
artifacts/ (and to docs/dashboard.png with HAVEN_DOCS_SCREENSHOT=1).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.browser

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).with_name("dashboard-scenario.yaml")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
ADMIN, READ = "browser-admin-token", "browser-read-token"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`haven sim serve` on a free loopback port; yields its base URL."""
    command = [sys.executable, "-c", "from haven.cli.main import main; main()", "sim", "serve", str(SCENARIO),
               "--port", "0", "--speed", "4", "--admin-token", ADMIN, "--read-token", READ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if match := re.search(r"dashboard:\s+(http://[^/\s]+)/", line):
                url = match[1]
        assert url, f"haven sim serve did not print its URL (exit code {proc.poll()})"
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "haven sim serve did not become healthy"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package `chromium`)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def api(url: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    response = httpx.request(method, f"{url}{path}", headers={"Authorization": f"Bearer {ADMIN}"},
                             timeout=10, **kwargs)  # type: ignore[arg-type]
    response.raise_for_status()
    return response


def chips(page: object, host: str) -> list[str]:
    return page.locator(f'[data-host="{host}"] .vm-chip').evaluate_all(  # type: ignore[attr-defined]
        "els => els.map(e => e.dataset.vm).sort()")


def screenshot(page: object, name: str) -> None:
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artifacts / name), full_page=True)  # type: ignore[attr-defined]


def test_dashboard(server: str, browser: object) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = playwright_api.expect

    # Loads with the token from the URL, which it then hides from the address bar.
    page.goto(f"{server}/?token={ADMIN}")
    assert "token=" not in page.url
    for host in ("h1", "h2", "h3"):
        expect(page.locator(f'[data-host="{host}"]')).to_be_visible()
    expect(page.locator('[data-host="h2"] .vm-chip[data-state="running"]')).to_have_count(3, timeout=15_000)
    assert chips(page, "h2") == ["app", "db", "legacy"]
    expect(page.locator('#vms tr[data-vm="web"] .pill')).to_have_text("running")
    expect(page.locator("#pet")).to_have_attribute("data-mood", "content", timeout=10_000)
    expect(page.locator("#pet-reason")).to_contain_text("all 4 HA VMs run")
    expect(page.locator("#manager")).to_contain_text("manager: h")
    expect(page.locator("#events li").first).to_be_visible()

    # Drain h2 from its card: confirm, watch its VMs appear on the other hosts.
    page.locator('[data-host="h2"] button[data-action="drain"]').click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-title")).to_have_text("Drain h2")
    page.locator("#confirm-ok").click()
    expect(page.locator(".toast .title").first).to_have_text("Draining h2")
    expect(page.locator('[data-host="h2"] .vm-chip')).to_have_count(0, timeout=30_000)
    moved = sorted(chips(page, "h1") + chips(page, "h3"))
    assert moved == ["app", "db", "legacy", "web"]
    expect(page.locator('[data-host="h2"]')).to_have_attribute("data-state", "maintenance")
    expect(page.locator(".toast.ok .detail").first).to_contain_text("h2 drained in", timeout=10_000)
    screenshot(page, "dashboard-drained.png")

    # Resume h2, then cut the power of a loaded host: the pet stops being content.
    api(server, "POST", "/api/v1/hosts/h2/resume")
    expect(page.locator('[data-host="h2"]')).to_have_attribute("data-state", "online", timeout=10_000)
    expect(page.locator("#pet")).to_have_attribute("data-mood", "content", timeout=20_000)

    # Migrate web live to h2 from the VM table, with the target picked in the dialog.
    source = page.locator('#vms tr[data-vm="web"] td').nth(2).inner_text()
    page.locator('#vms tr[data-vm="web"] button[data-action="migrate"]').click()
    expect(page.locator("#confirm-title")).to_have_text("Migrate web")
    page.locator("#migrate-target").select_option("h2")
    page.locator("#confirm-ok").click()
    expect(page.locator(".toast.ok .detail", has_text="web:")).to_contain_text(
        f"web: {source} → h2 in", timeout=20_000)
    assert "web" in chips(page, "h2")

    victim = "h1" if chips(page, "h1") else "h3"
    api(server, "POST", "/api/v1/sim/fault", json={"line": f"power off {victim}"})
    expect(page.locator("#pet")).to_have_attribute("data-mood", re.compile("^(ill|worried)$"), timeout=20_000)
    expect(page.locator("#pet-reason")).not_to_contain_text("all 4 HA VMs run; the cluster survives")
    expect(page.locator(f'[data-host="{victim}"]')).not_to_have_attribute("data-state", "online", timeout=10_000)
    # The timeline flags the host's loss from the event's fields (kind and new state), not its words.
    expect(page.locator(f'#events li.alert[data-kind="state_change"][data-subject="host {victim}"]').first
           ).to_be_visible(timeout=10_000)
    screenshot(page, "dashboard.png")
    if os.environ.get("HAVEN_DOCS_SCREENSHOT"):
        page.locator("#toasts").evaluate("el => el.replaceChildren()")
        page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)
    assert errors == [], f"JavaScript errors in the page: {errors}"
    page.close()


def test_page_asks_for_a_token_and_rejects_a_wrong_one(server: str, browser: object) -> None:
    """The first refresh sends several requests; the refusals of all but one are held back until the
    operator has typed the right token, so a late refusal must neither clear the input nor drop it."""
    page = browser.new_page()  # type: ignore[attr-defined]
    expect = playwright_api.expect
    refusals: list[object] = []

    def hold_late_refusals(route: object) -> None:
        wrong = route.request.headers.get("authorization") == "Bearer not-the-token"  # type: ignore[attr-defined]
        if wrong and refusals:
            refusals.append(route)
        else:
            if wrong:
                refusals.append(None)  # the first refusal passes and opens the dialog again
            route.continue_()  # type: ignore[attr-defined]

    page.route("**/api/v1/**", hold_late_refusals)
    page.goto(server)
    expect(page.locator("#token-dialog")).to_be_visible()
    page.locator("#token-input").fill("not-the-token")
    page.locator("#token-ok").click()
    expect(page.locator("#token-error")).to_contain_text("invalid token")
    page.locator("#token-input").fill(READ)
    held = [route for route in refusals if route is not None]
    assert len(held) >= 2, "the first refresh should have sent several requests with the wrong token"
    for route in held:
        route.continue_()  # type: ignore[attr-defined]
    for route in held:
        assert route.request.response().status in (401, 403)  # type: ignore[attr-defined]
    page.wait_for_timeout(300)  # and let the page handle them
    expect(page.locator("#token-input")).to_have_value(READ)
    page.locator("#token-ok").click()
    expect(page.locator('[data-host="h1"]')).to_be_visible()
    page.close()
