"""The REST API and dashboard served by a host daemon (when `NodeConfig.api` is set)."""
from __future__ import annotations

import time
from collections.abc import Callable

from haven.daemon.config import NodeConfig
from haven.ports.fencer import Fencer
from haven.ports.store import Store
from haven.runtime.layout import Layout


def serve_api(config: NodeConfig, store: Store, layout: Layout, manager_wake: Callable[[], None],
              power: Fencer | None = None) -> None:
    """Serve until the process ends (run it on a thread: the main thread owns the signals)."""
    import uvicorn

    from haven.api import create_app

    api = config.api
    assert api is not None
    app = create_app(store, layout, admin_token=api.admin_token, read_token=api.read_token, clock=time.time,
                     on_write=manager_wake, power=power)
    # uvicorn takes signals only on the main thread, which is the daemon's: it leaves them alone here.
    uvicorn.Server(uvicorn.Config(app, host=api.listen, port=api.port, log_level="warning")).run()
