"""Request bodies, read after authentication (so a refused request is never parsed) and
validated into one 'field: problem' line per problem.

VM specs may be sent as JSON or YAML (`Content-Type: application/yaml`).
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from haven.api.context import invalid
from haven.model.load import ConfigError, parse_yaml, validate

M = TypeVar("M", bound=BaseModel)

MAX_BODY = 1 << 20  # bytes
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


async def _decode(request: Request, what: str, optional: bool) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise invalid(f"the {what} is larger than {MAX_BODY} bytes")
    if not raw.strip():
        if optional:
            return {}
        raise invalid(f"the request needs a {what} body", ["(body): required"])
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise invalid(f"the {what} is not UTF-8 text") from None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in YAML_TYPES or not content_type:
        try:
            return parse_yaml(text, what)
        except ConfigError as error:
            raise invalid(f"the {what} is not valid YAML", error.problems) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise invalid(f"the {what} is not valid JSON",
                      [f"(body): line {error.lineno}, column {error.colno}: {error.msg}"]) from None


def parse(model: type[M], data: Any, what: str) -> M:
    if not isinstance(data, dict):
        raise invalid(f"the {what} must be an object (a mapping of field names to values)",
                      [f"(body): expected an object, got {type(data).__name__}"])
    try:
        return validate(model, data, what)
    except ConfigError as error:
        n = len(error.problems)
        raise invalid(f"the {what} is not valid ({n} problem{'s' if n != 1 else ''})",
                      error.problems) from None


def raw_mapping(what: str, optional: bool = False) -> Callable[[Request], Awaitable[Any]]:
    """A dependency returning the decoded (JSON or YAML) body, not yet validated."""
    async def dependency(request: Request) -> Any:
        return await _decode(request, what, optional)
    return dependency


def model_body(model: type[M], what: str, optional: bool = False) -> Callable[[Request], Awaitable[M]]:
    """A dependency returning the body validated as `model`."""
    async def dependency(request: Request) -> M:
        return parse(model, await _decode(request, what, optional), what)
    return dependency


def documented(model: type[BaseModel], yaml: bool = False, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` describing a body read by the dependencies above."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if yaml:
        content["application/yaml"] = {"schema": schema}
    return {"requestBody": {"required": required, "content": content}}
