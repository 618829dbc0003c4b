"""Request bodies, read after authentication (so a refused request is never parsed) and
validated into one 'field: problem' line per problem.

VM specs may be sent as JSON or YAML (`Content-Type: application/yaml`).
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from haven.api.context import invalid
from haven.model.load import ConfigError, describe_validation_error, parse_yaml

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


def _whole_numbers(data: Any) -> Any:
    """2.0 as 2: JSON Schema counts a number without a fraction as an integer; strict pydantic
    would not (a float field takes the int all the same)."""
    if isinstance(data, float) and data.is_integer():
        return int(data)
    if isinstance(data, dict):
        return {key: _whole_numbers(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_whole_numbers(value) for value in data]
    return data


def parse(model: type[M], data: Any, what: str) -> M:
    """Validate `data` as `model` with JSON's types taken strictly, as the OpenAPI document states
    them: `false` is no integer and `"512"` no number (a YAML body is read as the JSON it maps to)."""
    if not isinstance(data, dict):
        raise invalid(f"the {what} must be an object (a mapping of field names to values)",
                      [f"(body): expected an object, got {type(data).__name__}"])
    try:
        return model.model_validate_json(json.dumps(_whole_numbers(data), default=str), strict=True)
    except ValidationError as error:
        problems = describe_validation_error(error)
        n = len(problems)
        raise invalid(f"the {what} is not valid ({n} problem{'s' if n != 1 else ''})", problems) from None


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


def documented(model: type[BaseModel], yaml: bool = False, required: bool = True,
               component: str | None = None) -> dict[str, Any]:
    """`openapi_extra` describing a body read by the dependencies above (as the schema component
    `component` when the app documents a variant of `model` under another name)."""
    schema = {"$ref": f"#/components/schemas/{component or model.__name__}"}
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if yaml:
        content["application/yaml"] = {"schema": schema}
    return {"requestBody": {"required": required, "content": content}}
