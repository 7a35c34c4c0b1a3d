"""The demo's local webhook endpoint: it receives the daemon's deliveries and checks each HMAC signature."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from monitor.alerting import verify_signature
from monitor.demo.console import CYAN, RED, Console


class WebhookReceiver:
    """A local webhook endpoint (127.0.0.1, its own thread) that checks each delivery's HMAC signature.

    Deliveries are printed once a second, those of the same status and detector on one line.
    """

    def __init__(self, secret: str, console: Console) -> None:
        self.secret = secret
        self.console = console
        self.deliveries: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.receive(body, self.headers.get("X-Sentinel-Signature"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Silent on purpose: http.server's request log would interleave with the demo's own
                line per delivery, which says more (alert, subject, signature check)."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-webhook", daemon=True)
        self._printer = threading.Thread(target=self._print_loop, name="demo-webhook-print", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/sentinel"

    def start(self) -> None:
        self._thread.start()
        self._printer.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._stop.set()
        self._printer.join(timeout=5)
        self.flush()

    def receive(self, body: bytes, signature: str | None) -> None:
        """Check and record one delivery (the request handler's thread)."""
        valid = verify_signature(self.secret, body, signature)
        try:
            document = json.loads(body)
            alert = document.get("alert", {})
            status = str(document.get("status"))
        except (ValueError, AttributeError):
            alert, status = {}, "unreadable"
        details = alert.get("details") if isinstance(alert.get("details"), dict) else {}
        delivery = {
            "status": status,
            "alert_id": alert.get("id"),
            "detector": alert.get("detector"),
            "subject": details.get("subject", ""),
            "signature_valid": valid,
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        with self._lock:
            self.deliveries.append(delivery)
            self._pending.append(delivery)

    def _print_loop(self) -> None:
        while not self._stop.wait(1.0):
            self.flush()

    def flush(self) -> None:
        """Print the deliveries received since the last flush."""
        with self._lock:
            pending, self._pending = self._pending, []
        groups: dict[tuple[str, str, bool], list[dict[str, Any]]] = {}
        for d in pending:
            groups.setdefault((d["status"], str(d["detector"]), d["signature_valid"]), []).append(d)
        for (status, detector, valid), group in groups.items():
            ids = sorted(int(d["alert_id"]) for d in group if isinstance(d["alert_id"], int))
            span = "" if not ids else f"#{ids[0]}" if len(ids) == 1 else f"#{ids[0]}..#{ids[-1]}"
            subjects = [str(d["subject"]) for d in group if d["subject"]]
            about = (
                f" ({', '.join(subjects[:3])}{' +' + str(len(subjects) - 3) if len(subjects) > 3 else ''})"
            )
            count = f"{len(group)} deliveries " if len(group) > 1 else ""
            check = ("signatures ok" if len(group) > 1 else "signature ok") if valid else "BAD SIGNATURE"
            self.console.line(
                f"webhook  <- {count}{status} {span} {detector}{about if subjects else ''}: {check}",
                CYAN if valid else RED,
            )
