"""`haven sim serve SCENARIO`: a simulated cluster with the API and dashboard, no root needed."""
from __future__ import annotations

import secrets
import socket
from pathlib import Path

import click

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
    return sock


def serve(scenario: Path, speed: float, host: str, port: int, admin_token: str, read_token: str) -> None:
    import uvicorn

    from haven.api import create_app
    from haven.api.sim_backend import SimBackend
    from haven.model.load import ConfigError
    from haven.sim.scenario import cluster_from_scenario

    try:
        cluster = cluster_from_scenario(scenario)
    except ConfigError as error:
        raise click.ClickException(error.explain()) from None
    backend = SimBackend(cluster, speed, scenario=scenario.stem if scenario.is_file() else scenario.name)
    app = create_app(backend.store("api"), cluster.layout, admin_token=admin_token, read_token=read_token,
                     clock=backend.clock, on_write=backend.advance, sim_control=backend)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}"
    click.echo(f"haven: simulating {scenario} at {speed:g}x real time")
    click.echo(f"  dashboard:       {url}/?token={admin_token}")
    click.echo(f"  API:             {url}/api/v1  (OpenAPI: {url}/docs)")
    click.echo(f"  admin token:     {admin_token}")
    click.echo(f"  read-only token: {read_token}")
    click.echo(f"  try: HAVEN_API={url} HAVEN_TOKEN={admin_token} haven status")
    click.echo("Press Ctrl-C to stop.")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    backend.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled: a normal stop
        pass
    finally:
        backend.stop()
        sock.close()
    click.echo("haven: simulation stopped")


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
    def serve_command(scenario: Path, speed: float, host: str, port: int, admin_token: str | None,
                      read_token: str | None) -> None:
        """Run SCENARIO (a scenario directory or file) as a live simulated cluster and serve the
        API and the dashboard on it. Virtual time runs at SPEED x wall time; faults can be injected
        with POST /api/v1/sim/fault {"line": "power off h1"}.

        \b
        Example:
          haven sim serve tests/scenarios/host-power-off --speed 2
          open the printed dashboard URL in a browser
        """
        admin = admin_token or secrets.token_urlsafe(16)
        read = read_token or secrets.token_urlsafe(16)
        if admin == read:
            raise click.UsageError("the admin and read-only tokens must differ")
        serve(scenario, speed, host, port, admin, read)
