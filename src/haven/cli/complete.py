"""Shell completion of VM and host names, asked of the API.

A completion runs on every Tab press, so it is quick and silent: a short timeout, and on any
failure (no API, wrong token, bad URL) no candidates at all rather than a message in the prompt.
"""
from __future__ import annotations

import os

import click
from click.shell_completion import CompletionItem

from haven.cli.ops_client import DEFAULT_API, ApiClient

TIMEOUT_S = 1.0


def _names(ctx: click.Context, path: str, incomplete: str) -> list[CompletionItem]:
    # --api / --token given on the command line land in ctx.meta (ops.common); else the environment.
    url = ctx.meta.get("haven.api") or os.environ.get("HAVEN_API") or DEFAULT_API
    token = ctx.meta.get("haven.token") or os.environ.get("HAVEN_TOKEN") or None
    try:
        api = ApiClient(url, token, timeout=TIMEOUT_S)
        try:
            items = api.get(path)
        finally:
            api.close()
        names = sorted(str(item["name"]) for item in items)
    except Exception:  # noqa: BLE001 - a traceback in the middle of the user's prompt helps nobody
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def vm_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, "/api/v1/vms", incomplete)


def host_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, "/api/v1/hosts", incomplete)
