"""`pyqueue topics` and `pyqueue create`: list and create topics."""

from __future__ import annotations

import os
from typing import Any, Optional

import click

import pyqueue
from pyqueue.commands.common import (AnyTopic, ByteSize, console, human_bytes, open_broker, path_option, print_json,
                                     where)
from pyqueue.config import MAX_PARTITIONS, validate_name


def topic_summary(t: AnyTopic) -> dict[str, Any]:
    parts = t.stats()["partitions"].values()
    return {"name": t.name, "partitions": t.partitions, "messages": sum(p["messages"] for p in parts),
            "bytes": sum(p["bytes"] for p in parts), "groups": t.groups()}


@click.command()
@path_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def topics(path: Optional[str], as_json: bool) -> None:
    """List the topics of a broker: partitions, retained messages, bytes, groups."""
    with open_broker(path) as b:
        rows = [topic_summary(b.topic(name, create=False)) for name in b.topics()]
        if as_json:
            print_json(rows)
            return
        if not rows:
            click.echo(f"no topics in {where(b)}")
            return
        from rich.table import Table
        table = Table("topic", "partitions", "messages", "bytes", "groups", box=None, pad_edge=False)
        for r in rows:
            table.add_row(r["name"], str(r["partitions"]), f"{r['messages']:,}", human_bytes(r["bytes"]),
                          ", ".join(r["groups"]) or "-")
        for col in table.columns[1:4]:
            col.justify = "right"
        console().print(table)


@click.command()
@path_option
@click.argument("topic")
@click.option("--partitions", type=click.IntRange(1, MAX_PARTITIONS), default=None,
              help="Number of partitions (default 1).")
@click.option("--segment-bytes", type=ByteSize(), default=None, help="Segment file size, e.g. 64MiB.")
@click.option("--retention-bytes", type=ByteSize(), default=None, help="Drop old segments past this size.")
@click.option("--retention-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Drop segments whose newest message is older than this.")
@click.option("--max-message-bytes", type=ByteSize(), default=None, help="Largest message (key+headers+value).")
@click.option("--max-depth", type=click.IntRange(min=1), default=None,
              help="Sends wait while this many messages are unfinished (backpressure).")
def create(path: Optional[str], topic: str, partitions: Optional[int], segment_bytes: Optional[int],
           retention_bytes: Optional[int], retention_seconds: Optional[float],
           max_message_bytes: Optional[int], max_depth: Optional[int]) -> None:
    """Create a topic (and the broker directory if needed).

    On an existing topic, checks that the options given match its stored
    configuration."""
    validate_name(topic)                        # before anything is created on disk
    with open_broker(path, create=True) as b:
        if isinstance(b, pyqueue.Broker):
            existed = os.path.exists(os.path.join(b.path, "topics", topic, "topic.json"))
        else:
            existed = topic in b.topics()
        t = b.topic(topic, partitions=partitions, segment_bytes=segment_bytes,
                    retention_bytes=retention_bytes, retention_seconds=retention_seconds,
                    max_message_bytes=max_message_bytes, max_depth=max_depth)
        c = t.config
        click.echo(f"{'topic exists' if existed else 'created'}: {t.name} partitions={t.partitions} "
                   f"segment_bytes={c.segment_bytes} max_message_bytes={c.max_message_bytes}"
                   + (f" retention_bytes={c.retention_bytes}" if c.retention_bytes else "")
                   + (f" retention_seconds={c.retention_seconds:g}" if c.retention_seconds else "")
                   + (f" max_depth={c.max_depth}" if c.max_depth else ""))
