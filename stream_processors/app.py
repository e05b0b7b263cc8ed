"""The Faust application of the stream processors, built from :class:`~backbone.config.Settings`.

One app (``backbone-processors``) hosts both agents (journeys, KPIs). Every Faust setting that
matters is decided here, with the reason:

* ``processing_guarantee="at_least_once"``: Tansu has no transactions (InitProducerId fails),
  and the outputs carry deterministic ids, so replays are harmless downstream.
* session/rebalance timeouts of 6 s and a 1 s heartbeat: a group forms in 3–5 s on Tansu
  instead of ~23 s with the client defaults (see ``shared/EMBEDDED-BROKER.md``).
* in-memory table stores: state lives in the changelog topics; a restarted worker rebuilds it.
* no web server: metrics go through :mod:`backbone.metrics` on their own port.

``stock=True`` keeps Faust's own Stream, per-message consumer path and monitor (the
benchmark's baseline); otherwise the classes of :mod:`stream_processors.faust_fast` are
plugged in through Faust's extension points (the ``Stream`` and ``Monitor`` settings and the
app's ``transport``). Both variants probe true end offsets for table recovery (Tansu reports
wrong ones), which touches recovery only, never the per-message path.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust

from backbone.config import Settings
from backbone.kafka import client_config

DEFAULT_APP_ID = "backbone-processors"
GROUP_SESSION_TIMEOUT_S = 6.0
GROUP_HEARTBEAT_S = 1.0


def broker_urls(bootstrap: str) -> list[str]:
    """``host1:9092,host2:9092`` → Faust broker URLs (the aiokafka transport)."""
    hosts = [h.strip() for h in bootstrap.split(",") if h.strip()]
    if not hosts:
        raise ValueError("BACKBONE_KAFKA_BOOTSTRAP_SERVERS is empty: the processors need a broker address")
    return [f"kafka://{h}" for h in hosts]


def broker_credentials(settings: Settings) -> faust.auth.Credentials | None:
    """SASL/SSL credentials for Faust from the same settings the confluent clients use."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context: ssl.SSLContext | None = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location or None)
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    assert context is not None
    return faust.SSLCredentials(context)


def create_app(
    settings: Settings,
    *,
    app_id: str = DEFAULT_APP_ID,
    stock: bool = False,
    data_dir: Path | None = None,
    **overrides: Any,
) -> faust.App:
    """A configured (not yet started) Faust app. ``overrides`` are extra Faust settings (tests)."""
    fast_settings: dict[str, Any] = {}
    if not stock:
        from stream_processors.faust_fast import FastStream, QuietMonitor

        fast_settings = {"Stream": FastStream, "Monitor": QuietMonitor}
    datadir = (data_dir or settings.data_dir / "faust").resolve()
    datadir.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {
        "broker": broker_urls(settings.kafka_bootstrap_servers),
        "broker_credentials": broker_credentials(settings),
        "processing_guarantee": "at_least_once",
        "broker_session_timeout": GROUP_SESSION_TIMEOUT_S,
        "broker_rebalance_timeout": GROUP_SESSION_TIMEOUT_S,
        "broker_heartbeat_interval": GROUP_HEARTBEAT_S,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "store": "memory://",
        "web_enabled": False,
        "datadir": str(datadir),
        "autodiscover": False,
        "producer_acks": -1,
        # No standby replicas: a worker that takes partitions over restores them from the
        # changelog (the kill -9 and scale-out tests do exactly that). Faust's standby path
        # crashed the worker about once in ten scale-out runs on Tansu (``ValueError: Offset must
        # be a positive integer`` in faust/tables/recovery.py seeking a standby partition while a
        # second worker joined during a restore); standbys only shorten a takeover.
        "table_standby_replicas": 0,
        **fast_settings,
        **overrides,
    }
    app = faust.App(app_id, **conf)
    from stream_processors.faust_fast import FastTransport, ProbingTransport

    # The app's ``transport`` property has a public setter; the consumer class comes from it.
    # Both transports probe true end offsets for table recovery (a Tansu workaround, off the
    # per-message path); only the fast one changes how each message is handed to the streams.
    transport = (ProbingTransport if stock else FastTransport)(app.conf.broker_consumer, app)
    transport.probe_client_config = client_config(settings)
    app.transport = transport
    return app
