"""`pyqueue top`: a live view of a broker, refreshed every --interval.

Per topic: messages retained, the rate of sends (the growth of the end
offsets between two refreshes, so it counts every process's sends), depth
and bytes.  Per group: lag, the rate of consumption (the growth of the
committed positions), in flight, the age of the oldest unacked message and
dead letters.  Rates need two samples: the first screen shows "-".
`--once` prints one screen and `--iterations N` stops after N; off a
terminal the screens are printed one after another (as `top -b` does), so
scripts and tests can run it.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import click

from pyqueue.commands.common import (AnyBroker, StopOnSignal, console, count, get_topic, human_age, human_bytes,
                                     open_broker, path_option, where)
from pyqueue.errors import PyQueueError


class Sample:
    """One reading of every watched topic: stats and the monotonic time."""

    def __init__(self, broker: AnyBroker, names: tuple[str, ...]) -> None:
        self.at = time.monotonic()
        self.topics: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        for name in names or broker.topics():
            try:
                self.topics[name] = broker.topic(name, create=False).stats()
            except PyQueueError as e:          # deleted or damaged meanwhile: shown, not fatal
                self.errors[name] = str(e)

    def end(self, topic: str) -> int:
        return sum(p["end"] for p in self.topics[topic]["partitions"].values())

    def committed(self, topic: str, group: str) -> int:
        return sum(p["committed"] for p in self.topics[topic]["groups"][group]["partitions"].values())


def rate(now: Sample, before: Optional[Sample], value: Any) -> str:
    """Per second growth of value(sample) between two samples, or "-"."""
    if before is None or now.at <= before.at:
        return "-"
    try:
        return f"{max(0, value(now) - value(before)) / (now.at - before.at):,.0f}"
    except KeyError:                            # new since the last sample
        return "-"


def render(now: Sample, before: Optional[Sample], path: str) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    topics = Table("topic", "partitions", "messages", "in/s", "depth", "bytes", box=None, pad_edge=False,
                   title=f"pyqueue top  {path}  {time.strftime('%H:%M:%S')}", title_justify="left")
    groups = Table("topic", "group", "mode", "members", "lag", "out/s", "in flight", "oldest unacked",
                   "dead letters", box=None, pad_edge=False)
    for table, first in ((topics, 1), (groups, 3)):
        for col in table.columns[first:]:
            col.justify = "right"
    for name, st in now.topics.items():
        parts = st["partitions"].values()
        topics.add_row(name, str(len(parts)), f"{sum(p['messages'] for p in parts):,}",
                       rate(now, before, lambda s, n=name: s.end(n)), f"{st['depth']:,}",
                       human_bytes(sum(p["bytes"] for p in parts)))
        for gname, g in st["groups"].items():
            groups.add_row(name, gname, g["mode"], count(g["members"]), count(g["lag"]),
                           rate(now, before, lambda s, n=name, gn=gname: s.committed(n, gn)),
                           count(g["in_flight"]), human_age(g["oldest_unacked_age"]), count(g["dead_letters"]))
    screen: list[Any] = [topics]
    if groups.row_count:
        screen += [Text(""), groups]
    for name, message in now.errors.items():
        screen.append(Text(f"{name}: {message}", style="red"))
    if not now.topics and not now.errors:
        screen.append(Text("no topics"))
    return Group(*screen)


@click.command()
@path_option
@click.argument("topics", nargs=-1)
@click.option("--interval", type=click.FloatRange(min=0.05, max=3600), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one screen and exit (rates are not known yet).")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Exit after this many refreshes.")
def top(path: Optional[str], topics: tuple[str, ...], interval: float, once: bool, iterations: Optional[int]) -> None:
    """A live view of TOPICS (default: every topic): rates, depth, lag per
    topic and group.  Ctrl-C to leave."""
    if once:
        iterations = 1
    out = console()
    with StopOnSignal() as stop, open_broker(path) as b:
        for name in topics:
            get_topic(b, name)
        before: Optional[Sample] = None
        now = Sample(b, topics)
        if iterations == 1 or not out.is_terminal:
            # Off a terminal nothing is redrawn: each screen follows the last (as top -b).
            done = 1
            out.print(render(now, before, where(b)))
            while (iterations is None or done < iterations) and not stop.wait(interval):
                before, now = now, Sample(b, topics)
                out.print()
                out.print(render(now, before, where(b)))
                done += 1
            return
        from rich.live import Live
        with Live(render(now, None, where(b)), console=out, auto_refresh=False, screen=False) as live:
            done = 1
            while (iterations is None or done < iterations) and not stop.wait(interval):
                before, now = now, Sample(b, topics)
                live.update(render(now, before, where(b)), refresh=True)
                done += 1
