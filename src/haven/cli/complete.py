"""Shell completion of VM, host and service names, asked of the API.

A completion runs on every Tab press, so it is quick and silent: a short timeout, and on any
failure (no API, wrong token, bad URL) no candidates at all rather than a message in the prompt.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click
from click.shell_completion import CompletionItem

from haven.cli.ops_client import DEFAULT_API, ApiClient

TIMEOUT_S = 1.0


def _item_names(answer: Any) -> list[str]:
    return [str(item["name"]) for item in answer]


def _names(ctx: click.Context, path: str, incomplete: str,
           pick: Callable[[Any], list[str]] = _item_names) -> list[CompletionItem]:
    # --api / --token given on the command line land in ctx.meta (ops.common); else the environment.
    url = ctx.meta.get("haven.api") or os.environ.get("HAVEN_API") or DEFAULT_API
    token = ctx.meta.get("haven.token") or os.environ.get("HAVEN_TOKEN") or None
    try:
        api = ApiClient(url, token, timeout=TIMEOUT_S)
        try:
            answer = api.get(path)
        finally:
            api.close()
        names = sorted(pick(answer))
    except Exception:  # noqa: BLE001 - a traceback in the middle of the user's prompt helps nobody
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def vm_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, "/api/v1/vms", incomplete)


def host_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, "/api/v1/hosts", incomplete)


def service_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, "/api/v1/services", incomplete)


def _named_earlier(ctx: click.Context) -> str | None:
    """The NAME argument given before the option being completed. Completing an option's value,
    click stops parsing at that option: the name is still among the unparsed arguments then."""
    return ctx.params.get("name") or (ctx.args[0] if ctx.args else None)


def service_members(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The members of the service named earlier on the command line (`haven service move db --to `)."""
    name = _named_earlier(ctx)
    if not name:
        return []
    return _names(ctx, f"/api/v1/services/{name}", incomplete,
                  lambda service: [str(member["name"]) for member in service["members"]])


def pool_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, "/api/v1/pools", incomplete)


def replica_hosts(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The hosts holding a copy of the VM named earlier on the command line (`haven vm promote db --to `)."""
    name = _named_earlier(ctx)
    if not name:
        return []
    return _names(ctx, f"/api/v1/vms/{name}", incomplete,
                  lambda vm: sorted({str(c["host"]) for c in (vm.get("replicas") or {}).get("copies", [])}))


def host_name_list(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A comma-separated list of host names (`--hosts h1,h2`): completes the last one."""
    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    taken = set(done.split(",")) if done else set()
    return [CompletionItem(prefix + item.value) for item in host_names(ctx, param, last)
            if item.value not in taken]
