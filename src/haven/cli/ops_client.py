"""The CLI's HTTP client for the haven API: one clear sentence per failure, mapped to exit codes."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import click
import httpx

DEFAULT_API = "http://127.0.0.1:8470"

EXIT_OK = 0
EXIT_FAILED = 1  # the API refused in this state (409), the store is down (503), an operation failed
EXIT_USAGE = 2  # bad arguments, unknown VM, host or service, invalid spec (click's own usage errors too)
EXIT_UNREACHABLE = 3  # the API could not be reached
EXIT_AUTH = 4  # no token, or a wrong or read-only token for a change

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  the operation failed or was refused in the cluster's current state
  2  usage error: bad arguments, unknown VM, host or service, invalid spec
  3  cannot reach the API (check --api / HAVEN_API)
  4  authentication: missing, wrong or read-only token (--token / HAVEN_TOKEN)"""

# `haven status` answers a question a monitoring script asks, so its exit code carries the answer.
# 2, 3 and 4 mean what they mean for every command; the protection level gets 0, 1 and 5 (not 3:
# "the VMs are down" and "I could not look" call for different actions).
STATUS_EXIT = {"protected": EXIT_OK, "degraded": EXIT_FAILED, "down": 5}
EXIT_DOWN = STATUS_EXIT["down"]

STATUS_EXIT_CODES_HELP = """\b
Exit codes:
  0  protected: every HA VM runs and the cluster survives its planned host failures; every
     service runs with a healthy standby
  1  degraded: every HA VM runs, but a host failure now would leave some down, or a service
     has no healthy standby
  2  usage error: bad arguments
  3  cannot reach the API (check --api / HAVEN_API)
  4  authentication: missing or wrong token (--token / HAVEN_TOKEN)
  5  down: an HA VM or a service is not running"""


class CliError(click.ClickException):
    """An error shown as one sentence (plus one line per problem), exiting with `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILED, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.exit_code = code
        self.problems = problems or []

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)
        for problem in self.problems:
            click.echo(f"  - {problem}", err=True)


class Unreachable(CliError):
    """The API did not answer; `reason` is the transport's own words (for a short retry note)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, EXIT_UNREACHABLE)
        self.reason = reason


def _status_code_exit(status: int) -> int:
    if status in (401, 403):
        return EXIT_AUTH
    if status in (400, 404, 405, 422):
        return EXIT_USAGE
    return EXIT_FAILED


API_PREFIX = "/api/v1"


def normalize_api_url(url: str) -> str:
    """The server root from what the user passed: `haven sim serve` prints `.../api/v1`, and
    users paste it (or add a trailing slash); every request path already starts with /api/v1."""
    base = url.strip().rstrip("/")
    if base.endswith(API_PREFIX):
        base = base[: -len(API_PREFIX)].rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CliError(f"--api / HAVEN_API must be an http:// or https:// URL, not {url!r}", EXIT_USAGE)
    return base


class ApiClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 10.0) -> None:
        self.base_url = normalize_api_url(base_url)
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        except httpx.InvalidURL as error:
            raise CliError(f"--api / HAVEN_API is not a valid URL ({error})", EXIT_USAGE) from None

    def _unreachable(self, error: Exception) -> Unreachable:
        reason = type(error).__name__ if not str(error) else str(error)
        return Unreachable(f"cannot reach the haven API at {self.base_url} ({reason}); is it running? "
                           "Point --api or HAVEN_API at it", reason)

    def _check(self, response: httpx.Response) -> Any:
        if response.is_success:
            if response.headers.get("content-type", "").startswith("application/json"):
                return response.json()
            return response.text
        try:
            body = response.json()
            detail, problems = str(body.get("detail", "")), list(body.get("problems", []))
        except (ValueError, AttributeError):
            detail, problems = response.text.strip()[:200], []
        detail = detail or f"HTTP {response.status_code}"
        if response.status_code == 401:
            detail = f"{detail} (pass --token or set HAVEN_TOKEN)" if self.token is None else \
                f"{detail} (check --token / HAVEN_TOKEN)"
        raise CliError(detail, _status_code_exit(response.status_code), problems)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        return self._check(response)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body) if body is not None else self.request("POST", path)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def stream_events(self, after: str | None = None,
                      on_connect: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
        """Follow /api/v1/events/stream, yielding event objects until the server ends it.
        Without `after` the stream starts at the log's current end; `on_connect` is called once
        the server has accepted the stream."""
        params = {"after": after} if after is not None else {}
        try:
            with self._http.stream("GET", "/api/v1/events/stream", params=params,
                                   timeout=httpx.Timeout(10.0, read=60.0)) as response:
                if not response.is_success:
                    response.read()
                    self._check(response)
                if on_connect is not None:
                    on_connect()
                kind = ""
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "event":
                        yield json.loads(line[6:])
                    elif not line:
                        kind = ""
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None

    def close(self) -> None:
        self._http.close()
