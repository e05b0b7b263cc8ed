"""``backbone process``: run a stream processor worker in the foreground."""

from __future__ import annotations

import typer

from stream_processors.api import DEFAULT_BATCH_MAX


def register(app: typer.Typer) -> None:
    """Add the processor commands to the ``backbone`` CLI (Faust is imported only when they run)."""

    @app.command("process")
    def process(
        worker_id: int = typer.Option(
            1, "--worker-id", min=1, help="Worker number (offsets the metrics port)."
        ),
        bootstrap: str = typer.Option(
            "", "--bootstrap", help="Kafka bootstrap servers (default: BACKBONE_KAFKA_BOOTSTRAP_SERVERS)."
        ),
        stock: bool = typer.Option(False, "--stock", help="Stock Faust classes (benchmark baseline)."),
        batch_max: int = typer.Option(DEFAULT_BATCH_MAX, "--batch-max", min=1, help="Most events per batch."),
        batch_within: float = typer.Option(
            0.1, "--batch-within", min=0.01, help="Longest wait to fill a batch (s)."
        ),
        timer_interval: float = typer.Option(
            0.5, "--timer-interval", min=0.05, help="How often the timer sweeps and emits KPI windows (s)."
        ),
        compression: str = typer.Option(
            "none",
            "--compression",
            help="Compress the outputs and state changelogs: none or gzip (the only codec the "
            "processors' own Faust consumer reads without extra packages).",
        ),
        app_id: str = typer.Option(
            "backbone-processors",
            "--app-id",
            help="Faust app id (consumer group and changelog topic prefix).",
        ),
        metrics_port: int = typer.Option(
            -1,
            "--metrics-port",
            help="Metrics port (default: from BACKBONE_PROCESSOR_METRICS_PORT by worker id, skipping the "
            "sink's, the forwarder's and the board's ports).",
        ),
    ) -> None:
        """Consume the agency topics and compute stage records, KPIs and alerts (Ctrl-C stops)."""
        from backbone.cli import bootstrap_or_exit, metrics_port_or_exit, settings_or_exit
        from backbone.kafka import BrokerUnreachable
        from stream_processors.outputs import COMPRESSIONS
        from stream_processors.worker import WorkerOptions, run_worker

        if compression not in COMPRESSIONS:
            typer.echo(
                f"error: --compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}", err=True
            )
            raise typer.Exit(2)
        settings = settings_or_exit()
        servers = bootstrap_or_exit(settings, bootstrap)
        settings = settings.model_copy(update={"kafka_bootstrap_servers": servers})
        try:
            with metrics_port_or_exit():
                run_worker(
                    settings,
                    WorkerOptions(
                        worker_id=worker_id,
                        stock=stock,
                        batch_max=batch_max,
                        batch_within_s=batch_within,
                        timer_interval_s=timer_interval,
                        compression=compression,
                        app_id=app_id,
                        metrics_port=None if metrics_port < 0 else metrics_port,
                    ),
                )
        except BrokerUnreachable as exc:
            typer.echo(f"error: {exc} (BACKBONE_KAFKA_BOOTSTRAP_SERVERS or --bootstrap)", err=True)
            raise typer.Exit(3) from exc
