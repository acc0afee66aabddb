"""Rich progress bars for ``scratchwatch replay`` and the summary table at the end."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from pipeline.runner import ReplayReport, Supervisor

REFRESH_S = 0.25


class ReplayProgress:
    """One bar per file: frames analysed (of those sampled), frames/s, incidents so far."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[fps]:>6.1f} frames/s"),
            TextColumn("{task.fields[incidents]} incidents"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.tasks: dict[str, TaskID] = {}
        self._last = 0.0

    def __enter__(self) -> ReplayProgress:
        self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.progress.stop()

    def update(self, supervisor: Supervisor, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < REFRESH_S:
            return
        self._last = now
        for camera, result in supervisor.results.items():
            if camera not in self.tasks:
                self.tasks[camera] = self.progress.add_task(camera, total=None, fps=0.0, incidents=0)
            status = " [red]failed" if result.error else ""
            self.progress.update(
                self.tasks[camera],
                description=f"{camera}{status}",
                completed=result.frames,
                total=result.expected,
                fps=result.fps,
                incidents=result.incidents,
            )

    def summary(self, report: ReplayReport) -> None:
        """To stdout (the progress bars are on stderr), so ``replay ... > summary.txt`` keeps it."""
        out = Console()
        out.print(summary_table(report))
        for problem in report.pipeline_problems:
            out.print(f"[red]{problem}", highlight=False)


def summary_table(report: ReplayReport) -> Table:
    title = "replay summary" + (" (interrupted)" if report.interrupted else "")
    table = Table(title=title)
    for column, justify in (("source", "left"), ("frames", "right"), ("frames/s", "right"), ("incidents", "right"), ("result", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for f in report.files:
        result = f"[red]{f.problem}" if f.problem else "[green]ok"
        table.add_row(f.path, str(f.frames), f"{f.fps:.1f}", str(f.incidents), result)
    table.add_row("[b]total", str(report.frames), f"{report.fps:.1f}", str(report.incidents), "[green]ok" if report.ok else "[red]failed")
    return table
