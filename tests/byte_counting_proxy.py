"""A loopback TCP forwarder that counts the bytes the server sends: how much a read really fetched."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any


class ByteCountingProxy:
    """Forward 127.0.0.1:<port> to `upstream` (host, port); `received` counts server->client bytes.
    `rewrite` changes what the client sends (e.g. drops headers, as some gateways do)."""

    def __init__(self, upstream: tuple[str, int], rewrite: Callable[[bytes], bytes] | None = None) -> None:
        self.upstream = upstream
        self.rewrite = rewrite
        self.received = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server_side = socket.create_connection(proxy.upstream)
                pump = threading.Thread(target=proxy._pump, args=(self.request, server_side, False), daemon=True)
                pump.start()
                proxy._pump(server_side, self.request, True)
                pump.join(timeout=5)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(65536):
                if count:
                    with self._lock:
                        self.received += len(data)
                elif self.rewrite is not None:
                    data = self.rewrite(data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        with self._lock:
            self.received = 0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ByteCountingProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
