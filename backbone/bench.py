"""``backbone bench``: speed and memory measured side by side in one run, as ratios to a ceiling.

Machines are noisy, so every figure is printed beside its ceiling measured in the same run on
the same events (e.g. the full KPI job vs a bare confluent-kafka consume + fastavro decode).
Sections live in ``backbone/bench_*.py`` modules; each returns :class:`BenchRow` objects.
Results: a table on stdout, ``bench.json`` and ``bench.png`` in ``--out``.
"""

from __future__ import annotations

import importlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

SECTIONS: dict[str, str] = {
    "producer": "backbone.bench_producer",
    "processor": "backbone.bench_processor",
    "sink": "backbone.bench_sink",
    "freshness": "backbone.bench_freshness",
    "memory": "backbone.bench_memory",
    "recompute": "backbone.bench_recompute",
}


@dataclass
class BenchRow:
    """One measured figure beside its ceiling (same run, same input)."""

    section: str
    name: str
    value: float
    unit: str
    ceiling_name: str = ""
    ceiling_value: float | None = None
    target: str = ""
    notes: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.ceiling_value:
            return None
        return self.value / self.ceiling_value


@dataclass(frozen=True)
class BenchOptions:
    events: int
    rate: int
    partitions: int
    out: Path
    seed: int


SectionFn = Callable[[BenchOptions], list[BenchRow]]


def fresh_dir(path: Path) -> Path:
    """``path`` emptied (created if missing): every measured run starts from nothing.

    Why: the runs use fixed folders under ``--out``, and a second ``backbone bench`` found the
    first one's chdb database and processor state there. The freshness section then joined its
    stage records with the earlier runs' rows (same seeded case ids, so the same record ids) and
    reported 3,414 samples instead of ~59,000, with a p50 of 3.7 s.
    """
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def machine_facts() -> dict[str, str]:
    import os

    return {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "os": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def format_table(rows: list[BenchRow]) -> str:
    header = f"{'section':<10} {'measure':<44} {'value':>14} {'ceiling':>14} {'ratio':>7}  target / notes"
    lines = [header, "-" * len(header)]
    for r in rows:
        ceiling = f"{r.ceiling_value:,.0f}" if r.ceiling_value is not None else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        note = "; ".join(x for x in (r.target, r.notes) if x)
        digits = 2 if abs(r.value) < 10 and r.value != int(r.value) else 0  # e.g. cores
        value = f"{r.value:>10,.{digits}f}"
        lines.append(f"{r.section:<10} {r.name:<44} {value} {r.unit:<3} {ceiling:>14} {ratio:>7}  {note}")
    return "\n".join(lines)


def write_chart(rows: list[BenchRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio_rows = [(r, r.ratio) for r in rows if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(10, 0.45 * max(4, len(ratio_rows)) + 1))
    labels = [f"{r.section}: {r.name}" for r, _ in ratio_rows]
    ax.barh(labels, [ratio for _, ratio in ratio_rows], color="#2b6cb0")
    ax.axvline(1.0, color="#999", linestyle="--", linewidth=1)
    ax.set_xlabel("ratio to its ceiling (same run)")
    ax.invert_yaxis()
    ax.set_title("Delivery Backbone benchmark")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_sections(names: list[str], opts: BenchOptions, failures: list[str] | None = None) -> list[BenchRow]:
    """Run each section in turn. A section that raises gets a FAILED row (and its error in
    ``failures``) and the others still run: one broken measurement must not hide the rest."""
    rows: list[BenchRow] = []
    for name in names:
        try:
            module = importlib.import_module(SECTIONS[name])
        except ModuleNotFoundError as exc:
            if exc.name != SECTIONS[name]:
                raise  # the section exists but something it imports is missing: a real error
            typer.echo(f"bench: {name} skipped: {SECTIONS[name]} is not there", err=True)
            note = f"not measured: {exc.name} missing"
            rows.append(BenchRow(name, "(section skipped)", 0.0, "-", notes=note))
            continue
        typer.echo(f"bench: {name} ...", err=True)
        started = time.monotonic()
        try:
            rows.extend(module.run(opts))
        except Exception as exc:  # noqa: BLE001 - reported in the table and by the exit code
            if failures is None:
                raise
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            note = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(BenchRow(name, "(section FAILED)", 0.0, "-", notes=note))
        typer.echo(f"bench: {name} done in {time.monotonic() - started:.1f} s", err=True)
    return rows


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        events: int = typer.Option(
            20_000,
            min=2,  # the producer section sends its first event as a warm-up and times the rest
            help="Events per throughput measurement (scale up for steadier figures).",
        ),
        rate: int = typer.Option(
            10_000,
            min=100,  # the freshness section's floor: it stops lowering the rate below 100 ev/s
            help="Sustained rate (events/s) for the freshness measurement.",
        ),
        partitions: int = typer.Option(6, min=1, max=1024, help="Partitions of the benchmark topics."),
        sections: str = typer.Option("all", help=f"Comma-separated subset of: {', '.join(SECTIONS)}."),
        out: Path = typer.Option(Path("bench-results"), help="Folder for bench.json and bench.png."),
        seed: int = typer.Option(11, help="Simulator seed."),
    ) -> None:
        """Measure producer, processor, sink, freshness, memory and recompute against their ceilings."""
        chosen = (
            list(SECTIONS) if sections == "all" else [s.strip() for s in sections.split(",") if s.strip()]
        )
        unknown = [s for s in chosen if s not in SECTIONS]
        if unknown:
            typer.echo(
                f"error: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", err=True
            )
            raise typer.Exit(2)
        out.mkdir(parents=True, exist_ok=True)
        opts = BenchOptions(events=events, rate=rate, partitions=partitions, out=out, seed=seed)
        failures: list[str] = []
        rows = run_sections(chosen, opts, failures)
        table = format_table(rows)
        typer.echo(table)
        facts = machine_facts()
        (out / "bench.json").write_text(
            json.dumps(
                {
                    "machine": facts,
                    "options": {**asdict(opts), "out": str(out)},
                    "rows": [{**asdict(r), "ratio": r.ratio} for r in rows],
                },
                indent=2,
            )
        )
        write_chart(rows, out / "bench.png")
        typer.echo(f"\nmachine: {facts}\nwritten: {out / 'bench.json'}, {out / 'bench.png'}")
        if failures:
            typer.echo("\nFAILED sections:\n" + "\n".join(failures), err=True)
            raise typer.Exit(1)
