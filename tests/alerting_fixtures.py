"""Fixtures for the alerting tests: a local webhook receiver and the real Prometheus/Alertmanager.

Test modules build their fixtures from these (``from alerting_fixtures import ...``). The stack
runs the repo's configs, rendered only with loopback addresses and short intervals.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from alerting.stack import AlertingStack, Timings, missing_binaries
from backbone.embedded.broker import free_port

# Short enough for tests, long enough that Alertmanager groups what arrives together.
TEST_TIMINGS = Timings(scrape_interval="1s", evaluation_interval="1s", group_wait="1s", group_interval="1s")


@dataclass(frozen=True)
class Notification:
    """One webhook call from Alertmanager: the desk (URL path) and the JSON body."""

    path: str
    body: dict[str, Any]
    received_at: float

    @property
    def receiver(self) -> str:
        return str(self.body["receiver"])

    @property
    def status(self) -> str:
        return str(self.body["status"])

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """The alerts of this notification whose labels include ``labels``."""
        return [a for a in self.body["alerts"] if all(a["labels"].get(k) == v for k, v in labels.items())]


class WebhookReceiver:
    """A tiny HTTP server that records every POST Alertmanager sends to it."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver._cond:
                    receiver.notifications.append(Notification(self.path, body, time.monotonic()))
                    receiver._cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def matching(self, predicate: Callable[[Notification], bool]) -> list[Notification]:
        with self._cond:
            return [n for n in self.notifications if predicate(n)]

    def wait_for(
        self, predicate: Callable[[Notification], bool], timeout_s: float = 30.0, what: str = "notification"
    ) -> Notification:
        """The first notification matching ``predicate``; fails the test after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for n in self.notifications:
                    if predicate(n):
                        return n
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [
                        (n.receiver, n.status, [a["labels"].get("alertname") for a in n.body["alerts"]])
                        for n in self.notifications
                    ]
                    pytest.fail(f"no {what} within {timeout_s:.0f} s; webhook received: {seen}")
                self._cond.wait(left)


def for_alert(receiver: str, status: str, **labels: str) -> Callable[[Notification], bool]:
    """Predicate: a notification to ``receiver`` with ``status`` carrying an alert with ``labels``."""
    return lambda n: n.receiver == receiver and n.status == status and bool(n.alerts(**labels))


def require_binaries() -> None:
    missing = missing_binaries()
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: run scripts/setup.sh (Debian packages "
            "prometheus, prometheus-alertmanager)"
        )


def start_stack(
    work_dir: Path,
    webhook: WebhookReceiver,
    scrape_targets: dict[str, list[str]] | None = None,
    alertmanager_port: int | None = None,
) -> AlertingStack:
    require_binaries()
    return AlertingStack(
        work_dir,
        prometheus_port=free_port(),
        alertmanager_port=alertmanager_port or free_port(),
        scrape_targets=scrape_targets,
        webhook_base_url=webhook.url,
        timings=TEST_TIMINGS,
        smtp_smarthost=f"127.0.0.1:{free_port()}",  # e-mail receivers fail fast, nothing leaves the host
    ).start()


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A running :class:`WebhookReceiver`; wrap it in a fixture of the scope you need."""
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
