"""What `pyqueue demo` shows: live progress on a terminal (rich), plain lines
otherwise, and the summary at the end."""

from __future__ import annotations

from typing import Any, Callable, Optional

_ROWS = (("sent", "uploads sent"), ("processed", "processed"), ("in_flight", "in flight (leased)"),
         ("queued", "queued or waiting to retry"), ("dead", "dead-lettered"),
         ("redelivered", "redelivered"), ("workers", "workers alive"), ("reports", "reports"))


class View:
    """Events and progress of one demo run.

    On a terminal: a rich Live area (progress bars and a table of counts)
    with event lines printed above it.  Otherwise (a pipe, a file, a test):
    one plain line per event and per report, nothing redrawn."""

    def __init__(self, total: int, *, live: Optional[bool] = None,
                 echo: Callable[[str], None] = print) -> None:
        self.total = total
        self.echo = echo
        self._live: Any = None
        self._console: Any = None
        if live is not False:
            from rich.console import Console
            console = Console()
            if live or console.is_terminal:
                self._console = console

    @property
    def rich(self) -> bool:
        return self._console is not None

    def start(self) -> None:
        if not self.rich:
            return
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self._progress = Progress(TextColumn("{task.description:<10}"), BarColumn(bar_width=40),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=self._console)
        self._sent = self._progress.add_task("sent", total=self.total)
        self._done = self._progress.add_task("finished", total=self.total)
        self._live = Live(self._render({}), console=self._console, refresh_per_second=10,
                          transient=False)
        self._live.start()

    def _render(self, counts: dict[str, Any]) -> Any:
        from rich.console import Group
        from rich.table import Table
        table = Table.grid(padding=(0, 2))
        table.add_column(style="dim")
        table.add_column(justify="right")
        for key, label in _ROWS:
            value = counts.get(key)
            table.add_row(label, "-" if value is None else f"{value:,}")
        return Group(self._progress, table) if hasattr(self, "_progress") else table

    def update(self, counts: dict[str, Any]) -> None:
        """Redraw the progress with these counts (terminal only)."""
        if self._live is None:
            return
        self._progress.update(self._sent, completed=counts.get("sent", 0))
        self._progress.update(self._done, completed=counts.get("processed", 0) + counts.get("dead", 0))
        self._live.update(self._render(counts))

    def event(self, text: str, style: str = "") -> None:
        """One line of what happened (above the live area on a terminal)."""
        if self._console is not None:
            self._console.print(text, style=style or None, highlight=False)
        else:
            self.echo(text)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def summary(self, s: dict[str, Any]) -> None:
        """The final account (a table on a terminal, lines otherwise)."""
        lines = summary_lines(s)
        if self._console is not None:
            from rich.table import Table
            table = Table(title="summary, read back from the broker after every process exited",
                          show_header=False, title_justify="left")
            table.add_column(style="bold")
            table.add_column()
            for label, text in lines:
                table.add_row(label, text)
            self._console.print(table)
            self._console.print(verdict(s), style="bold green" if s["ok"] else "bold red")
        else:
            self.echo("summary, read back from the broker after every process exited:")
            width = max(len(label) for label, _ in lines)
            for label, text in lines:
                self.echo(f"  {label:<{width}}  {text}")
            self.echo(verdict(s))


def summary_lines(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows of the summary, for either output."""
    lat = s["latency_ms"]
    killed = s["killed"]
    dead = ", ".join(f"{d['id']} after {d['deliveries']} deliveries ({d['error']})" for d in s["dead_letters"])
    redelivered = ", ".join(f"{r['id']} (delivery {r['delivery']}, worker {r['worker']})"
                            for r in s["redeliveries"][:5])
    if len(s["redeliveries"]) > 5:
        redelivered += f" and {len(s['redeliveries']) - 5} more"
    workers = ", ".join(f"w{w}: {n:,}" + (" (killed)" if killed and w == str(killed["worker"]) else "")
                        for w, n in sorted(s["by_worker"].items(), key=lambda kv: int(kv[0])))
    rows = [
        ("uploads sent", f"{s['sent']:,} (the producer's returned sends: "
                         f"{'unknown' if s['producer_sent'] is None else format(s['producer_sent'], ',')})"),
        ("processed", f"{s['processed']:,} distinct uploads"
                      + (f"; {s['duplicates']} extra results of uploads processed again (at-least-once "
                         f"delivery)" if s["duplicates"] else "")),
        ("dead-lettered", f"{s['dead_lettered']:,}" + (f": {dead}" if dead else "")),
        ("adds up", f"{s['processed']:,} processed + {s['dead_lettered']:,} dead-lettered "
                    f"{'=' if s['processed'] + s['dead_lettered'] == s['sent'] else '!='} {s['sent']:,} sent"),
        ("redelivered", f"{s['redelivered']:,}" + (f": {redelivered}" if redelivered else "")),
        ("killed worker", _killed(killed)),
        ("retries", f"{s['retries']:,} failed deliveries sent back with backoff"),
        ("reports fired", f"{s['reports_fired']:,} (schedule 'report', every {s['report_every']:g} s)"),
        ("throughput", f"{s['throughput']:,.0f} uploads/s ({s['processed']:,} from first send to last "
                       f"result in {s['seconds']:.2f} s); at most {s['peak_per_second']:,} in one second"),
        ("latency", f"send -> processed p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, "
                    f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms"),
        ("by worker", workers),
        ("left in queue", f"{s['left_in_queue']:,}"),
    ]
    return rows


def _killed(k: Optional[dict[str, Any]]) -> str:
    if not k:
        return "none"
    text = f"w{k['worker']} (pid {k['pid']}) by SIGKILL while holding {k['upload']}"
    if k.get("redelivered_after_s") is not None:
        text += f"; processed again {k['redelivered_after_s']:.2f} s later"
    return text


def verdict(s: dict[str, Any]) -> str:
    if s["ok"]:
        return "ok: every upload processed or dead-lettered, exactly once accounted for"
    return "FAILED: " + "; ".join(s["problems"])
