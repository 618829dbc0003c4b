"""Load and validate YAML declarations with one clear message per problem."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from haven.model.spec import ClusterConfig

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A declaration a user wrote is invalid. `problems` has one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def explain(self) -> str:
        lines = [f"{self.source} is not valid ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def describe_validation_error(error: ValidationError) -> list[str]:
    """Turn pydantic's errors into 'field.path: what is wrong (got X)' lines."""
    problems = []
    for item in error.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        elif item["type"] == "missing":
            message = "required field is missing"
        got = item.get("input")
        hidden = item["type"] in ("missing", "extra_forbidden") or isinstance(got, (dict, list))
        shown = "" if hidden else f" (got {got!r})"
        problems.append(f"{_field_path(tuple(item['loc']))}: {message}{shown}")
    return problems


def validate(model: type[M], data: Any, source: str = "input") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(source, describe_validation_error(error)) from None


def parse_yaml(text: str, source: str = "input") -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML ({getattr(error, 'problem', error)})"]) from None


def load_yaml_file(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read the file ({error.strerror})"]) from None
    return parse_yaml(text, str(path))


def load_cluster_config(path: str | Path) -> ClusterConfig:
    data = load_yaml_file(path)
    return validate(ClusterConfig, data if data is not None else {}, str(path))
