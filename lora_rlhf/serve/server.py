"""Run the app with uvicorn: in the foreground (the CLI) or in a background thread (tests, notebooks)."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # loopback: exposing the server is an explicit choice (--host 0.0.0.0)


# Seconds uvicorn waits on shutdown for running requests, which `halt_all` has already told to stop.
_GRACE_S = 10.0


def run_server(app, *, host: str = DEFAULT_HOST, port: int = 8000, log_level: str = "info") -> None:
    """Serve `app` until interrupted (SIGINT/SIGTERM stop running generations within a token)."""
    _server(app, host=host, port=port, log_level=log_level).run()


def _server(app, **config):
    """A uvicorn server that halts the app's running generations as soon as it starts shutting down.

    uvicorn waits for running requests *before* it sends the lifespan shutdown, so a lifespan hook alone
    would run only after the longest generation had finished (issue 12).
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            inflight = getattr(getattr(app, "state", None), "inflight", None)
            if inflight is not None:
                inflight.halt_all()
            await super().shutdown(sockets)

    return Server(uvicorn.Config(app, timeout_graceful_shutdown=_GRACE_S, **config))


class BackgroundServer:
    """`with BackgroundServer(app) as server: OpenAI(base_url=server.url + "/v1", api_key="x")`;
    port 0 = any free port.
    """

    def __init__(self, app, *, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning") -> None:
        self._server = _server(app, host=host, port=port, log_level=log_level)
        self._server.install_signal_handlers = lambda: None  # only the main thread may install them
        self._thread = threading.Thread(target=self._server.run, name="lora-rlhf-serve", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=_GRACE_S + 5)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
