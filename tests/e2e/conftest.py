"""When a lab test fails, its report carries the cluster's recent events: a failure on a shared CI
machine may not come back, so the story of what the cluster did must be in the first report."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

RECENT_EVENTS = 150


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    fixtures = getattr(item, "funcargs", {})
    lab = fixtures.get("healthy") or fixtures.get("lab")
    if report.when != "call" or not report.failed or getattr(lab, "store", None) is None:
        return  # the driver tests' `lab` is a bare network: no store, no events
    from haven.lab.demo import events_since

    try:
        events = events_since(lab, 0.0)[-RECENT_EVENTS:]
    except Exception as error:  # noqa: BLE001 - the store may be what failed
        report.sections.append(("lab events", f"could not read the events: {error!r}"))
        return
    lines = (f"{e.t:.3f} {e.source:<10} {e.subject}: {e.message}" for e in events)
    report.sections.append(("lab events", "\n".join(lines)))
