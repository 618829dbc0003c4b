"""The dashboard in headless Chromium against `haven sim serve` (a simulated cluster).

The page loads and shows hosts and VMs; a drain clicked in the page moves the VMs in the page;
powering a host off through the simulation changes the pet's mood. A phone-sized page does not
scroll sideways; a read-only session shows no write buttons; memory reads as in the CLI; a drain
the API refuses shows why and can be forced; an ill pet says why its VM is stuck. Screenshots go
to artifacts/ (and to docs/dashboard.png with HAVEN_DOCS_SCREENSHOT=1).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from haven.cli.ops_render import mib

pytestmark = pytest.mark.browser

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).with_name("dashboard-scenario.yaml")
STUCK = Path(__file__).with_name("stuck-scenario.yaml")  # a drain that cannot finish, a VM that cannot run
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
ADMIN, READ = "browser-admin-token", "browser-read-token"


@contextmanager
def serving(scenario: Path) -> Iterator[str]:
    """`haven sim serve` on a free loopback port; yields its base URL."""
    command = [sys.executable, "-c", "from haven.cli.main import main; main()", "sim", "serve", str(scenario),
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
def server() -> Iterator[str]:
    with serving(SCENARIO) as url:
        yield url


@pytest.fixture(scope="module")
def stuck_server() -> Iterator[str]:
    with serving(STUCK) as url:
        yield url


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

    # Migrate web (on h3) live to h1 from the VM table, with the target picked in the dialog. h1
    # has room for it whether or not the VMs the drain moved have gone back to h2 yet.
    source = page.locator('#vms tr[data-vm="web"] td').nth(2).inner_text()
    page.locator('#vms tr[data-vm="web"] button[data-action="migrate"]').click()
    expect(page.locator("#confirm-title")).to_have_text("Migrate web")
    page.locator("#migrate-target").select_option("h1")
    page.locator("#confirm-ok").click()
    expect(page.locator(".toast.ok .detail", has_text="web:")).to_contain_text(
        f"web: {source} → h1 in", timeout=20_000)
    assert "web" in chips(page, "h1")

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


PHONE = {"width": 390, "height": 844}


def assert_reachable(locator: object) -> None:
    """Once scrolled to, the element lies within the phone's width and nothing covers it."""
    locator.evaluate("el => el.scrollIntoView({block: 'center', inline: 'nearest'})")  # type: ignore[attr-defined]
    box = locator.bounding_box()  # type: ignore[attr-defined]
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    on_top = locator.evaluate("""el => {
        const r = el.getBoundingClientRect();
        const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
        return el === top || el.contains(top);
    }""")  # type: ignore[attr-defined]
    assert on_top, "the element is covered by another one"


def test_phone_layout_does_not_scroll_sideways(server: str, browser: object) -> None:
    page = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = playwright_api.expect
    page.goto(f"{server}/?token={ADMIN}")
    migrate = page.locator('#vms button[data-action="migrate"]').first
    expect(migrate).to_be_visible(timeout=20_000)
    expect(page.locator("#events li").first).to_be_visible(timeout=10_000)
    expect(page.locator('[data-host] button[data-action]').first).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen"
    for control in (page.locator("#signout"), migrate, page.locator('#vms button[data-action="stop"]').last,
                    page.locator("#events li").first, page.locator('[data-host] button[data-action]').last):
        assert_reachable(control)
    page.evaluate("scrollTo(0, 0)")  # the sticky top bar at the top of the full-page picture
    screenshot(page, "dashboard-phone.png")
    # The dialogs fit too.
    migrate.click()
    expect(page.locator("#confirm")).to_be_visible()
    assert_reachable(page.locator("#confirm-ok"))
    page.locator("#confirm-cancel").click()
    expect(page.locator("#confirm")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert errors == [], f"JavaScript errors in the page: {errors}"
    page.close()


def test_read_only_session_shows_no_write_buttons(server: str, browser: object) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    expect = playwright_api.expect
    page.goto(f"{server}/?token={READ}")
    # Rows and cards are drawn once the token's role is known: no button is drawn for this token.
    expect(page.locator('#vms tr[data-vm="web"]')).to_be_visible()
    expect(page.locator('[data-host="h1"]')).to_be_visible()
    expect(page.locator("#role")).to_have_text("read-only")
    expect(page.locator("#role")).to_be_visible()
    expect(page.locator("button[data-action]")).to_have_count(0)
    # Signed in again with the admin token, the same page offers the actions.
    page.locator("#signout").click()
    page.locator("#token-input").fill(ADMIN)
    page.locator("#token-ok").click()
    expect(page.locator('#vms button[data-action="stop"]').first).to_be_visible()
    expect(page.locator('[data-host] button[data-action]').first).to_be_visible()
    expect(page.locator("#role")).to_be_hidden()
    page.close()


def test_memory_is_written_as_the_cli_writes_it(server: str, browser: object) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    expect = playwright_api.expect
    page.goto(f"{server}/?token={READ}")
    # Every size up to 64 GiB in steps that hit the ties (1,280 MiB is 1.25 GiB) and whole GiB.
    values = [*range(2048), *range(2048, 65536 + 1, 64), 1048576]
    shown = page.evaluate("async (values) => { const { fmtMiB } = await import('/static/format.js'); "
                          "return values.map(fmtMiB); }", values)
    differ = [(v, got, mib(v)) for v, got in zip(values, shown, strict=True) if got != mib(v)]
    assert not differ, f"(MiB, dashboard, CLI): {differ[:5]}"
    # ... and the page writes sizes with it.
    expect(page.locator('#vms tr[data-vm="db"] td[data-label="memory"]')).to_have_text(mib(1536))
    expect(page.locator('[data-host="h1"] .bar-row .value').first).to_contain_text(f" / {mib(4096)}")
    page.close()


def test_a_refused_drain_shows_why_and_can_be_forced(stuck_server: str, browser: object) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    bodies: list[object] = []
    page.on("request", lambda request: bodies.append(json.loads(request.post_data or "null"))
            if request.url.endswith("/hosts/h1/drain") else None)
    expect = playwright_api.expect
    page.goto(f"{stuck_server}/?token={ADMIN}")

    # The ill pet says why huge is stuck: its host restriction and the memory it lacks.
    expect(page.locator("#pet")).to_have_attribute("data-mood", "ill", timeout=15_000)
    reason = page.locator("#pet-reason")
    expect(reason).to_contain_text("HA VM huge")
    expect(reason).to_contain_text("restricted to h1, h3")
    expect(reason).to_contain_text("needs 2560 MiB, the most free is 1792 MiB on h1 (768 MiB short)")
    expect(page.locator('[data-host="h1"] .vm-chip[data-vm="db"]')).to_have_attribute("data-state", "running",
                                                                                    timeout=15_000)

    # The API's refusal (asked here without the page: a refused drain changes nothing).
    refusal = httpx.post(f"{stuck_server}/api/v1/hosts/h1/drain", headers={"Authorization": f"Bearer {ADMIN}"})
    assert refusal.status_code == 409 and refusal.json()["problems"], refusal.text

    def ask_to_drain() -> None:
        page.locator('[data-host="h1"] button[data-action="drain"]').click()
        expect(page.locator("#confirm-title")).to_have_text("Drain h1")
        page.locator("#confirm-ok").click()
        expect(page.locator("#confirm-title")).to_have_text("h1 cannot be drained cleanly")
        expect(page.locator("#confirm-text")).to_have_text(refusal.json()["detail"])
        expect(page.locator("#drain-problems li")).to_have_text(refusal.json()["problems"])
        expect(page.locator("#confirm-ok")).to_have_text("Drain anyway")

    # Cancelled: nothing is requested, the host stays online.
    ask_to_drain()
    page.locator("#confirm-cancel").click()
    expect(page.locator(".toast.cancelled .detail")).to_have_text("h1 was not drained")
    assert api(stuck_server, "GET", "/api/v1/hosts/h1").json()["maintenance_requested"] is False
    assert bodies == [None]

    # Drained anyway: the page posts again with force, and h1 goes into maintenance with db on it.
    ask_to_drain()
    screenshot(page, "dashboard-drain-refused.png")
    page.locator("#confirm-ok").click()
    expect(page.locator('[data-host="h1"]')).to_have_attribute("data-state", "maintenance", timeout=10_000)
    state = page.locator('[data-host="h1"] [data-role="host-state"]')
    expect(state).to_have_text("maintenance")  # the state's word, as in the CLI; db still there is a note
    expect(state).to_have_attribute("title", "VMs moving out")
    assert bodies == [None, None, {"force": True}]
    # The pet now names the host in maintenance among the reasons huge cannot run.
    expect(reason).to_contain_text("the most free is 1792 MiB on h3 (768 MiB short); h1 in maintenance",
                                   timeout=10_000)
    assert errors == [], f"JavaScript errors in the page: {errors}"
    page.close()


def test_each_host_shows_its_fence_device(stuck_server: str, browser: object) -> None:
    """h1's device passes its checks, then fails them (`fence fails h1`): the card, the API and
    /metrics say so; a host without a device says none."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = playwright_api.expect
    page.goto(f"{stuck_server}/?token={ADMIN}")
    badge = page.locator('[data-host="h1"] [data-role="fence-device"]')
    expect(badge).to_have_text("fence device: ok", timeout=15_000)
    expect(page.locator('[data-host="h2"] [data-role="fence-device"]')).to_have_text("fence device: none")

    api(stuck_server, "POST", "/api/v1/sim/fault", json={"line": "fence fails h1"})
    try:
        expect(badge).to_have_text("fence device: failing: the device did not answer", timeout=15_000)
        check = api(stuck_server, "GET", "/api/v1/hosts/h1").json()["fence_device"]
        assert check["ok"] is False and check["detail"] == "the device did not answer"
        assert api(stuck_server, "GET", "/api/v1/hosts/h2").json()["fence_device"] is None
        metrics = api(stuck_server, "GET", "/metrics").text
        assert 'haven_fence_device_ok{host="h1"} 0.0' in metrics
        assert 'haven_fence_device_ok{host="h2"}' not in metrics
    finally:
        api(stuck_server, "POST", "/api/v1/sim/fault", json={"line": "fence works h1"})
    expect(badge).to_have_text("fence device: ok", timeout=15_000)
    assert errors == [], f"JavaScript errors in the page: {errors}"
    page.close()


SERVICE = Path(__file__).with_name("service-scenario.yaml")  # service db over db1 (h1) and db2 (h2)


@pytest.fixture(scope="module")
def service_server() -> Iterator[str]:
    with serving(SERVICE) as url:
        yield url


def test_services_show_their_members_and_move_from_the_page(service_server: str, browser: object) -> None:
    """The service's card: its phase, floating IP, members with their hosts, the active one marked;
    a move from the card; the pet worried when the standby's host is lost."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = playwright_api.expect
    page.goto(f"{service_server}/?token={ADMIN}")
    card = page.locator('[data-service="db"]')
    expect(card.locator('[data-role="service-phase"]')).to_have_text("running", timeout=15_000)
    expect(card.locator('[data-role="floating-ip"]')).to_have_text("10.0.9.10/24")
    active = card.locator('.member[data-role="active"]')
    expect(active).to_have_attribute("data-member", "db1")
    expect(active).to_contain_text("db1 on h1")
    expect(card.locator('.member[data-member="db2"]')).to_have_attribute("data-role", "standby")
    expect(card.locator('.member[data-member="db2"]')).to_contain_text("on h2")
    expect(page.locator("#pet")).to_have_attribute("data-mood", "content", timeout=10_000)
    expect(page.locator("#pet-reason")).to_contain_text("1 service runs with a healthy standby")
    # Its members never migrate (the service moves between them); other VMs do.
    expect(page.locator('#vms tr[data-vm="web"] button[data-action="migrate"]')).to_be_visible()
    expect(page.locator('#vms tr[data-vm="db1"] button[data-action="migrate"]')).to_have_count(0)

    # Move it to db2 from the card, with the target picked in the dialog.
    card.locator('button[data-action="move"]').click()
    expect(page.locator("#confirm-title")).to_have_text("Move db")
    page.locator("#move-target").select_option("db2")
    page.locator("#confirm-ok").click()
    expect(page.locator(".toast.ok .detail", has_text="db:")).to_contain_text("db: db1 → db2 in", timeout=20_000)
    expect(active).to_have_attribute("data-member", "db2")
    expect(card.locator('[data-role="service-phase"]')).to_have_text("running")
    assert api(service_server, "GET", "/api/v1/services/db").json()["active"] == "db2"
    screenshot(page, "dashboard-service.png")

    # db1's host goes: db2 runs on, without a standby.
    api(service_server, "POST", "/api/v1/sim/fault", json={"line": "power off h1"})
    expect(page.locator("#pet")).to_have_attribute("data-mood", "worried", timeout=20_000)
    expect(page.locator("#pet-reason")).to_contain_text("service db has no healthy standby (db1 host lost)")
    expect(card.locator('.member[data-member="db1"]')).to_have_attribute("data-condition", "host lost")
    assert errors == [], f"JavaScript errors in the page: {errors}"
    page.close()


def test_services_read_only_and_on_a_phone(service_server: str, browser: object) -> None:
    expect = playwright_api.expect
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(f"{service_server}/?token={READ}")
    expect(page.locator('[data-service="db"] .member').first).to_be_visible(timeout=15_000)
    expect(page.locator("#role")).to_be_visible()
    expect(page.locator("button[data-action]")).to_have_count(0)
    page.close()

    page = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{service_server}/?token={ADMIN}")
    button = page.locator('[data-service="db"] button[data-action]').first
    expect(button).to_be_visible(timeout=15_000)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen"
    assert_reachable(button)
    assert_reachable(page.locator('[data-service="db"] .member').last)
    page.evaluate("scrollTo(0, 0)")  # the sticky top bar at the top of the full-page picture
    screenshot(page, "dashboard-service-phone.png")
    assert errors == [], f"JavaScript errors in the page: {errors}"
    page.close()


PAIR = Path(__file__).with_name("pair-scenario.yaml")  # db on replicated pool pair (h1, h2)


@pytest.fixture(scope="module")
def pair_server() -> Iterator[str]:
    with serving(PAIR) as url:
        yield url


def test_a_vm_on_a_replicated_pool_shows_its_copy_and_worries_the_pet(pair_server: str, browser: object) -> None:
    """db's copy on h2 is in sync; h2 powered off: the badge says stale and for how long, the pet is
    worried and says which pair; h2 back: resynced, in sync again. It fits a phone as well."""
    page = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    expect = playwright_api.expect
    page.goto(f"{pair_server}/?token={READ}")
    badge = page.locator('#vms tr[data-vm="db"] [data-role="replica"]')
    expect(badge).to_have_text("h2: in sync", timeout=20_000)
    expect(page.locator('#vms tr[data-vm="web"] [data-role="replica"]')).to_have_count(0)
    expect(page.locator("#pet")).to_have_attribute("data-mood", "content", timeout=10_000)

    api(pair_server, "POST", "/api/v1/sim/fault", json={"line": "power off h2"})
    expect(badge).to_have_attribute("data-state", "stale", timeout=15_000)
    expect(badge).to_have_text(re.compile(r"^h2: stale for \d+ (s|min)$"))
    expect(page.locator("#pet")).to_have_attribute("data-mood", "worried", timeout=10_000)
    expect(page.locator("#pet-reason")).to_contain_text("vm db on h1 has no in-sync replica (disk 0 on h2 stale")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert_reachable(badge)
    screenshot(page, "dashboard-replica-phone.png")

    api(pair_server, "POST", "/api/v1/sim/fault", json={"line": "power on h2"})
    expect(badge).to_have_text("h2: in sync", timeout=30_000)
    expect(page.locator("#pet")).to_have_attribute("data-mood", "content", timeout=10_000)
    assert errors == [], f"JavaScript errors in the page: {errors}"
    page.close()
