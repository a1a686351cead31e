"""Serving the hub: uvicorn over TLS, with the client certificate handed to the app.

Uvicorn verifies a client certificate against the consortium CA during the handshake
(``CERT_OPTIONAL``: researchers connect without one) but does not pass it to the application. The
small protocol subclass below adds it to each request's ASGI scope as the standard ``tls``
extension (``scope["extensions"]["tls"]["client_cert_chain"]``), which the node endpoints read.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cordiale.hub.app import create_app
from cordiale.hub.service import Hub

__all__ = ["HubServer", "bind"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def _with_client_cert(app: ASGIApp, cert_pem: str | None) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            ext = dict(scope.get("extensions") or {})
            ext["tls"] = {"client_cert_chain": [cert_pem] if cert_pem else []}
            scope["extensions"] = ext
        await app(scope, receive, send)

    return wrapped


class MutualTLSProtocol(H11Protocol):
    """uvicorn's h11 protocol, plus the peer certificate of the connection in every scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        pem = ssl.DER_cert_to_PEM_cert(der) if der else None
        self.app = _with_client_cert(self.app, pem)


class _Server(uvicorn.Server):
    """uvicorn's server; on SIGTERM/SIGINT it first releases the long polls, then shuts down."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0: any free port; read it from ``getsockname()``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


class HubServer:
    """The hub's service and its HTTPS server; :meth:`run` blocks, :meth:`start` uses a thread."""

    def __init__(self, hub: Hub, sock: socket.socket) -> None:
        self.hub = hub
        self.sock = sock
        ca = hub.ca
        config = uvicorn.Config(
            create_app(hub),
            ssl_certfile=str(ca.hub_cert_path),
            ssl_keyfile=str(ca.hub_key_path),
            ssl_ca_certs=str(ca.ca_cert_path),
            ssl_cert_reqs=ssl.CERT_OPTIONAL,
            http=MutualTLSProtocol,
            log_level="warning",
            timeout_keep_alive=60,
            timeout_graceful_shutdown=2,
        )
        self.server = _Server(config, self._release)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"https://{host}:{port}"

    def run(self) -> None:
        self.hub.start()
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.hub.stop()

    def start(self) -> None:
        """Serve from a background thread (tests, benchmarks); returns once it listens."""
        self._thread = threading.Thread(target=self.run, name="hub-server", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the hub server stopped during start-up")
            threading.Event().wait(0.02)

    def _release(self) -> None:
        self.hub.stop_event.set()
        self.hub.mailbox.close()

    def stop(self) -> None:
        self._release()
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
