"""The service on uvicorn: `gigaface serve` and `gigaface view` start it here."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from gigaface.service.app import create_app
from gigaface.service.state import Config


def serve(config: Config, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Run the service on `sock`, a socket the caller bound (so that a refused address or
    port is found, and said, before anything starts)."""
    import uvicorn

    app = create_app(config)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=30))
    if on_ready is not None:
        def wait():
            while not server.started:
                time.sleep(0.05)
            on_ready()
        threading.Thread(target=wait, daemon=True).start()
    server.run(sockets=[sock])
