"""What every route needs: the store, the layout, the clock, and the errors the API answers with.

The API reads the store and writes intent; it never acts. Every write is one put or one
transaction, so a failed request leaves the store as it was.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import HTTPException, Request

from haven.ports.fencer import Fencer
from haven.ports.store import Compare, Delete, KeyValue, Put, Store, StoreUnavailable
from haven.runtime.layout import Layout, Snapshot, read_snapshot


class SimControl(Protocol):
    """What a simulated cluster offers the API beyond the store (see `api.sim_backend`)."""

    def fault(self, line: str) -> None:
        """Inject a fault line such as "power off h1"; ValueError if it is not understood."""

    def info(self) -> dict[str, Any]:
        """Virtual time, speed, scenario name."""


class ApiProblem(HTTPException):
    """An answer other than success: a status, one sentence, and optionally one line per problem."""

    def __init__(self, status: int, detail: str, problems: Sequence[str] = (),
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, headers)
        self.problems = list(problems)


def not_found(what: str, name: str) -> ApiProblem:
    return ApiProblem(404, f"{what} {name!r} does not exist")


def conflict(detail: str) -> ApiProblem:
    return ApiProblem(409, detail)


def invalid(detail: str, problems: Sequence[str] = ()) -> ApiProblem:
    return ApiProblem(422, detail, problems)


class StoreDataError(StoreUnavailable):
    """The store answered, but holds a record this API cannot decode."""


@dataclass
class ApiContext:
    store: Store
    layout: Layout
    clock: Callable[[], float]
    admin_token: str
    read_token: str
    on_write: Callable[[], None] | None = None
    sim_control: SimControl | None = None
    power: Fencer | None = None  # the fence devices of the node serving the API (`haven host power-on`)
    store_errors: int = 0  # store failures seen by this API process (a metric)
    open_streams: int = 0  # event streams being served now
    _errors_lock: threading.Lock = field(default_factory=threading.Lock)

    def count_store_error(self) -> None:
        with self._errors_lock:
            self.store_errors += 1

    def snapshot(self) -> Snapshot:
        try:
            return read_snapshot(self.store, self.layout)
        except ValueError as error:  # pydantic and JSON errors: a record we cannot read
            raise StoreDataError(f"the store holds a record haven cannot read ({first_line(error)})") \
                from None

    def get(self, key: str) -> KeyValue | None:
        return self.store.get(key)

    def get_prefix(self, prefix: str) -> list[KeyValue]:
        return self.store.get_prefix(prefix)

    def commit(self, compares: Sequence[Compare], ops: Sequence[Put | Delete], what: str) -> None:
        """Apply `ops` atomically if `compares` hold; 409 if someone changed the keys meanwhile."""
        result = self.store.txn(compares, ops)
        if not result.succeeded:
            raise conflict(f"{what} changed while this request was handled; read it again and retry")
        if self.on_write is not None:
            self.on_write()


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def context(request: Request) -> ApiContext:
    """FastAPI dependency: the app's context."""
    return request.app.state.haven


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))
