"""`haven sim serve SCENARIO`: a simulated cluster with the API and dashboard, no root needed."""
from __future__ import annotations

import asyncio
import json
import secrets
import socket
from pathlib import Path
from typing import Any

import click

from haven.cli.ops_client import EXIT_USAGE, CliError
from haven.cli.output import OUTPUT

DEFAULT_PORT = 8470


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise click.UsageError(f"cannot listen on {host}:{port} ({error.strerror}); pick another "
                               "port with --port (0 picks a free one)") from None
    # Listening before the address is printed: a client that reads it and connects at once waits in
    # the backlog until the server accepts, instead of being refused.
    sock.listen(128)
    return sock


class EndRequestsOnShutdown:
    """ASGI wrapper: once the server starts to stop, every open request hears that its client left.

    An event stream (`/api/v1/events/stream`) never ends by itself, so uvicorn would wait for it
    and then cancel it with a traceback on the console. Told "disconnected", it ends cleanly and
    `haven events --follow` reconnects to the next server."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.closing = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def receive_until_closing() -> dict[str, Any]:
            if self.closing.is_set():
                return {"type": "http.disconnect"}
            message = asyncio.ensure_future(receive())
            closing = asyncio.ensure_future(self.closing.wait())
            done, pending = await asyncio.wait({message, closing}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            return message.result() if message in done else {"type": "http.disconnect"}

        await self.app(scope, receive_until_closing, send)


def _server(wrapper: EndRequestsOnShutdown) -> Any:
    import uvicorn  # here, not at the top: shell completion runs `haven` on every Tab

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            wrapper.closing.set()
            await super().shutdown(sockets)

    return Server(uvicorn.Config(wrapper, log_level="warning", timeout_graceful_shutdown=1))


def serve(scenario: Path, speed: float, host: str, port: int, admin_token: str, read_token: str,
          output: str = "text") -> None:
    from haven.api import create_app
    from haven.api.sim_backend import SimBackend
    from haven.model.load import ConfigError
    from haven.sim.scenario import cluster_from_scenario

    try:
        cluster = cluster_from_scenario(scenario)
    except ConfigError as error:
        raise CliError(error.explain(), EXIT_USAGE) from None  # bad input: exit 2, as everywhere
    backend = SimBackend(cluster, speed, scenario=scenario.stem if scenario.is_file() else scenario.name)
    app = create_app(backend.store("api"), cluster.layout, admin_token=admin_token, read_token=read_token,
                     clock=backend.clock, on_write=backend.advance, sim_control=backend)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}"
    if output == "json":
        # One line, printed once the port is bound: a script reads it to find a server on --port 0.
        click.echo(json.dumps({"scenario": str(scenario), "speed": speed, "url": url, "api": f"{url}/api/v1",
                               "dashboard": f"{url}/?token={admin_token}", "admin_token": admin_token,
                               "read_token": read_token}))
    else:
        click.echo(f"haven: simulating {scenario} at {speed:g}x real time")
        click.echo(f"  dashboard:       {url}/?token={admin_token}")
        click.echo(f"  API:             {url}/api/v1  (OpenAPI: {url}/docs)")
        click.echo(f"  admin token:     {admin_token}")
        click.echo(f"  read-only token: {read_token}")
        click.echo(f"  try: HAVEN_API={url} HAVEN_TOKEN={admin_token} haven status")
        click.echo("Press Ctrl-C to stop.")
    server = _server(EndRequestsOnShutdown(app))
    backend.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: a normal stop
        pass
    finally:
        backend.stop()
        sock.close()
    click.echo("haven: simulation stopped", err=output == "json")


def register_serve(group: click.Group) -> None:
    """Add `serve` to the `haven sim` group."""

    @group.command("serve")
    @click.argument("scenario", type=click.Path(exists=True, path_type=Path))
    @click.option("--speed", type=click.FloatRange(min=0.01, max=1000), default=1.0, show_default=True,
                  help="virtual seconds per wall-clock second")
    @click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
    @click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
                  help="port to listen on (0: any free port)")
    @click.option("--admin-token", envvar="HAVEN_ADMIN_TOKEN", default=None,
                  help="token for reads and writes [env HAVEN_ADMIN_TOKEN; default: random]")
    @click.option("--read-token", envvar="HAVEN_READ_TOKEN", default=None,
                  help="read-only token [env HAVEN_READ_TOKEN; default: random]")
    @OUTPUT
    def serve_command(scenario: Path, speed: float, host: str, port: int, admin_token: str | None,
                      read_token: str | None, output: str) -> None:
        """Run SCENARIO (a scenario directory or file) as a live simulated cluster and serve the
        API and the dashboard on it. Virtual time runs at SPEED x wall time; faults can be injected
        with POST /api/v1/sim/fault {"line": "power off h1"}.

        \b
        Example:
          haven sim serve tests/scenarios/host-power-off --speed 2
          open the printed dashboard URL in a browser

        With -o json the start is one JSON line: scenario, speed, url, api, dashboard,
        admin_token, read_token.
        """
        admin = admin_token or secrets.token_urlsafe(16)
        read = read_token or secrets.token_urlsafe(16)
        if admin == read:
            raise click.UsageError("the admin and read-only tokens must differ")
        serve(scenario, speed, host, port, admin, read, output)
