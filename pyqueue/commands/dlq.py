"""`pyqueue dlq list` and `pyqueue dlq redrive`: look at a dead-letter
topic and move its messages back (Topic.redrive, in chunks for the progress
bar).  A dead letter is pending until redriven: redrive keeps its position
in the dead-letter topic's consumer group "redrive"."""

from __future__ import annotations

import time
from typing import Any, Optional

import click

from pyqueue.commands.common import (AnyMessage, AnyTopic, console, get_topic, human_age, iso_time, open_broker,
                                     path_option, print_json, shown, text_or_b64)

REDRIVE_GROUP = "redrive"       # the group Topic.redrive keeps its position in
_CHUNK = 1000


def pending_from(t: AnyTopic) -> dict[int, int]:
    """Per partition, the first dead letter not redriven yet."""
    group = t.stats()["groups"].get(REDRIVE_GROUP)
    return {p: (group["partitions"][p]["committed"] if group else t.offsets(p)[0]) for p in range(t.partitions)}


@click.group()
def dlq() -> None:
    """Dead-letter topics: list their messages, redrive them."""


@dlq.command("list")
@path_option
@click.argument("topic")
@click.option("--all", "show_all", is_flag=True, help="Include dead letters already redriven.")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
def list_(path: Optional[str], topic: str, show_all: bool, limit: int, as_json: bool) -> None:
    """The dead letters of TOPIC (a dead-letter topic): where each came from,
    its deliveries, the last error, its value."""
    with open_broker(path) as b:
        t = get_topic(b, topic)
        starts = {p: t.offsets(p)[0] for p in range(t.partitions)} if show_all else pending_from(t)
        letters: list[AnyMessage] = []
        total = 0
        for p, start in starts.items():
            end = t.offsets(p)[1]
            total += end - start
            off = start
            while off < end and len(letters) < limit:
                got = t.read(p, off, min(_CHUNK, limit - len(letters)))
                if not got:
                    break
                letters += got
                off = got[-1].offset + 1
        letters.sort(key=lambda m: m.timestamp)
        if as_json:
            print_json([_as_dict(m) for m in letters])
            return
        what = "dead letters" if show_all else "dead letters pending redrive"
        if not total:
            click.echo(f"{topic}: no {what}")
            return
        from rich.table import Table
        table = Table("at", "age", "from", "deliveries", "error", "value", box=None, pad_edge=False)
        now = time.time()
        for m in letters:
            h = m.headers
            origin = (f"{shown(h.get('x-original-topic'))}[{shown(h.get('x-original-partition'))}]"
                      f"@{shown(h.get('x-original-offset'))}" if "x-original-topic" in h else "-")
            table.add_row(f"{m.partition}:{m.offset}", human_age(now - m.timestamp), origin,
                          shown(h.get("x-delivery-count")), shown(h.get("x-error"), 80), shown(m.value, 60))
        out = console()
        out.print(f"{topic}: {total:,} {what}" + (f" (first {len(letters):,} shown)" if total > len(letters) else ""))
        out.print(table)


def _as_dict(m: AnyMessage) -> dict[str, Any]:
    return {"partition": m.partition, "offset": m.offset, "timestamp": m.timestamp, "time": iso_time(m.timestamp),
            "key": text_or_b64(m.key), "value": text_or_b64(m.value),
            "headers": {k: text_or_b64(v) for k, v in m.headers.items()}}


@dlq.command()
@path_option
@click.argument("topic")
@click.option("--to", "target", required=True, help="Topic to move the dead letters to (e.g. the original one).")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=None, help="Move at most this many.")
def redrive(path: Optional[str], topic: str, target: str, limit: Optional[int]) -> None:
    """Move the pending dead letters of TOPIC to topic --to, with their key,
    value and original headers (the x-original-*, x-delivery-count and
    x-error headers are dropped)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    with open_broker(path) as b:
        t = get_topic(b, topic)
        get_topic(b, target)
        if target == topic:
            raise click.BadParameter("must name another topic than the dead-letter topic", param_hint="--to")
        pending = sum(t.offsets(p)[1] - start for p, start in pending_from(t).items())
        total = pending if limit is None else min(limit, pending)
        moved = 0
        with Progress(TextColumn("redrive"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console(stderr=True), transient=False) as bar:
            task = bar.add_task("redrive", total=total)
            while limit is None or moved < limit:
                n = t.redrive(target, limit=_CHUNK if limit is None else min(_CHUNK, limit - moved))
                if n == 0:
                    break
                moved += n
                bar.update(task, completed=moved, total=max(total, moved))
        click.echo(f"moved {moved:,} dead letter{'s' if moved != 1 else ''} from {topic} to {target}")
