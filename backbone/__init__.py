"""Delivery Backbone: the thin cross-cutting layer (configuration, CLI, embedded runtime).

The data flows agency → ``producers`` → Kafka → ``stream_processors`` → ``sinks`` (ClickHouse)
→ ``dashboards`` / ``alerting``; this package only wires those parts together.
"""

__version__ = "0.1.0"
