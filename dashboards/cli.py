"""``backbone dashboards ...``: build the Grafana boards, deploy them, or serve the built-in board."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    dashboards_app = typer.Typer(
        help="Grafana boards as code and the built-in command view.", no_args_is_help=True
    )
    app.add_typer(dashboards_app, name="dashboards")

    @dashboards_app.command("build")
    def build(
        check: bool = typer.Option(False, "--check", help="Fail (exit 1) if the committed files are stale."),
    ) -> None:
        """Regenerate dashboards/grafana/**.json and the dashboards provisioning file (missions file)."""
        from backbone.cli import settings_or_exit
        from dashboards.grafana_build import check_files, rendered_files, write_files
        from dashboards.mission_facts import MissionFacts
        from stream_processors.missions import MissionsError, load_missions

        settings = settings_or_exit()
        try:
            facts = MissionFacts.load(load_missions(settings.missions_file))
        except MissionsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        files = rendered_files(facts)
        if check:
            problems = check_files(files)
            for problem in problems:
                typer.echo(f"error: {problem}", err=True)
            if problems:
                raise typer.Exit(1)
            typer.echo(f"ok: {len(files)} generated files are up to date")
            return
        changed = write_files(files)
        for path in changed:
            typer.echo(f"wrote {path}")
        typer.echo(f"ok: {len(files)} files, {len(changed)} changed")

    @dashboards_app.command("deploy")
    def deploy_cmd(
        url: str = typer.Option(
            ..., envvar="GRAFANA_URL", help="Grafana base URL, e.g. http://localhost:3000."
        ),
        token: str = typer.Option(..., envvar="GRAFANA_TOKEN", help="Service-account token (Editor role)."),
        timeout: float = typer.Option(10.0, help="Seconds to wait for each Grafana call."),
    ) -> None:
        """Create the folders and overwrite the boards (by uid) in a running Grafana; safe to repeat."""
        from backbone.cli import settings_or_exit
        from dashboards.deploy import DeployError, committed_boards, deploy
        from dashboards.grafana_build import GRAFANA_DIR, BoardsBuilder, check_files, rendered_files
        from dashboards.mission_facts import MissionFacts
        from stream_processors.missions import load_missions

        facts = MissionFacts.load(load_missions(settings_or_exit().missions_file))
        problems = check_files(rendered_files(facts))
        if problems:
            typer.echo(
                "error: the committed boards are stale; run `backbone dashboards build` first", err=True
            )
            raise typer.Exit(1)
        try:
            report = deploy(
                url,
                token,
                BoardsBuilder(facts).folders(),
                committed_boards(GRAFANA_DIR),
                timeout_s=timeout,
                log=typer.echo,
            )
        except DeployError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(
            f"ok: Grafana {report.grafana_version}: {len(report.dashboards)} boards in "
            f"{len(report.folders_created) + len(report.folders_updated)} folders "
            f"({len(report.folders_created)} created)"
        )

    @dashboards_app.command("serve")
    def serve(
        port: int = typer.Option(None, help="Port (default: BACKBONE_BOARD_PORT)."),
        host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    ) -> None:
        """Serve the built-in command view from the configured ClickHouse (when no sink owns the chdb)."""
        import time

        from backbone.cli import settings_or_exit
        from dashboards.board.server import start_board
        from sinks.client import LockedQuery, open_client

        settings = settings_or_exit()
        query = LockedQuery(open_client(settings, create_database=False))  # read-only user
        handle = start_board(query, settings.board_port if port is None else port, settings, host=host)
        typer.echo(f"command view on {handle.url}  (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            handle.stop()
            query.close()
