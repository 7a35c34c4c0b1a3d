"""Fault injection for the reliability tests: a TCP proxy that can be cut, a broker behind it, probes.

:class:`TcpProxy` sits between the daemon and a real service (PostgreSQL, the broker). ``cut()`` closes its
listening socket and every open connection, so the service looks exactly like one that went away: new
connections are refused and established ones are reset. ``restore()`` listens again on the same port. The
real service is never stopped, so other tests that share it are not disturbed.

:class:`ProxiedBroker` runs a Tansu broker whose advertised listener is the proxy's address: every client
(the daemon, the test's producer) reaches the broker only through the proxy, and the broker keeps its data
while the proxy is cut.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Self

from monitor.broker import EmbeddedBroker, free_port

__all__ = [
    "ProxiedBroker",
    "TcpProxy",
    "committed_offsets",
    "lag_from_metrics",
    "readiness",
    "rss_kib",
]

_CHUNK = 65536


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream``; ``cut()`` refuses and resets, ``restore()`` undoes it.

    Parameters
    ----------
    upstream
        ``(host, port)`` of the real service.
    port
        The port to listen on; a free one when None.

    Examples
    --------
    >>> proxy = TcpProxy(("127.0.0.1", 5432)).start()  # doctest: +SKIP
    >>> proxy.cut()  # doctest: +SKIP
    >>> proxy.restore()  # doctest: +SKIP
    >>> proxy.stop()  # doctest: +SKIP
    """

    def __init__(self, upstream: tuple[str, int], port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.accepted = 0  # connections accepted while up: shows the proxy was really in the path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def start(self) -> Self:
        self.restore()
        return self

    def restore(self) -> None:
        """Listen again on the same port (new connections reach the service again)."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The cut left connections in TIME_WAIT on this port; without SO_REUSEADDR the rebind would fail.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones: the service is gone, as far as clients can tell."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            # SO_LINGER 0 sends a RST instead of a FIN: the peer sees "connection reset", like a crashed host.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            _close(sock)

    def stop(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut: the listener was closed
            if self._listener is not listener:
                _close(client)
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._connections.update((client, server))
                self.accepted += 1
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(source)
                self._connections.discard(target)
            _close(source)
            _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class ProxiedBroker:
    """A Tansu broker reachable only through a :class:`TcpProxy` (its advertised listener).

    Kafka clients connect to the bootstrap address, then to the advertised one from the metadata; with the
    proxy's address advertised, cutting the proxy cuts every client off while the broker keeps its topics.
    """

    def __init__(self) -> None:
        self.broker_port = free_port()
        self.proxy = TcpProxy(("127.0.0.1", self.broker_port))
        self.broker = EmbeddedBroker(self.broker_port, advertised=self.proxy.address)

    @property
    def bootstrap_servers(self) -> str:
        return self.proxy.address

    def start(self, timeout: float = 20.0) -> Self:
        self.broker.start(timeout)
        self.proxy.start()
        return self

    def stop(self) -> None:
        self.proxy.stop()
        self.broker.stop()


def readiness(port: int) -> tuple[int, dict[str, str]]:
    """``GET /readyz`` of the daemon's API: the status code and its checks (0 when nothing answers)."""
    import json
    import urllib.error

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, dict(json.loads(response.read())["checks"])
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read())["checks"])
    except OSError:
        return 0, {}


_LAG_LINE = re.compile(r"^sentinel_consumer_lag\{[^}]*\}\s+(\S+)$", re.MULTILINE)


def lag_from_metrics(port: int) -> int | None:
    """The summed ``sentinel_consumer_lag`` over partitions from ``/metrics``; None when none is exposed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = [float(v) for v in _LAG_LINE.findall(text)]
    return int(sum(values)) if values else None


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from ``/proc/<pid>/status`` (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def committed_offsets(bootstrap_servers: str, group_id: str, topic: str, partitions: int) -> dict[int, int]:
    """The offsets the consumer group has committed on ``topic``, per partition, as the broker has them.

    A consumer with the group's id that never subscribes only reads the offsets: it does not join the group.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers.split(","), group_id=group_id, enable_auto_commit=False
    )
    try:
        found = {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)
    return {p: offset for p, offset in found.items() if offset is not None}
