"""The CLI's HTTP client for the haven API: one clear sentence per failure, mapped to exit codes."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import click
import httpx

DEFAULT_API = "http://127.0.0.1:8470"

EXIT_OK = 0
EXIT_FAILED = 1  # the API refused in this state (409), the store is down (503), an operation failed
EXIT_USAGE = 2  # bad arguments, unknown VM or host, invalid spec (click's own usage errors too)
EXIT_UNREACHABLE = 3  # the API could not be reached
EXIT_AUTH = 4  # no token, or a wrong or read-only token for a change

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  the operation failed or was refused in the cluster's current state
  2  usage error: bad arguments, unknown VM or host, invalid spec
  3  cannot reach the API (check --api / HAVEN_API)
  4  authentication: missing, wrong or read-only token (--token / HAVEN_TOKEN)"""


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

    def _unreachable(self, error: Exception) -> CliError:
        reason = type(error).__name__ if not str(error) else str(error)
        return CliError(f"cannot reach the haven API at {self.base_url} ({reason}); is it running? "
                        "Point --api or HAVEN_API at it", EXIT_UNREACHABLE)

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

    def stream_events(self, after: str | None = None) -> Iterator[dict[str, Any]]:
        """Follow /api/v1/events/stream, yielding event objects until the server ends it."""
        params = {"after": after} if after else {}
        try:
            with self._http.stream("GET", "/api/v1/events/stream", params=params,
                                   timeout=httpx.Timeout(10.0, read=60.0)) as response:
                if not response.is_success:
                    response.read()
                    self._check(response)
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
