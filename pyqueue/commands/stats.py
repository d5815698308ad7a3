"""`pyqueue stats` (topics, partitions and groups) and `pyqueue groups`
(lag, in flight, oldest unacked age and dead letters per group).

A figure the backend cannot tell (None in stats(): segments and synced
positions, delayed messages and queue-mode members on JetStream) shows as
"-"."""

from __future__ import annotations

from typing import Any, Optional

import click

import pyqueue
from pyqueue.commands.common import (console, count, human_age, human_bytes, open_broker, path_option, print_json,
                                     topics_of, where)


def delayed(g: dict[str, Any]) -> Optional[int]:
    """A group's delayed messages (None if the backend cannot tell)."""
    per = [p["delayed"] for p in g["partitions"].values()]
    return None if None in per else sum(per)


def group_rows(topic: str, groups: dict[str, Any], per_partition: bool = False) -> list[list[str]]:
    rows = []
    for name, g in groups.items():
        rows.append([topic, name, g["mode"], count(g["members"]), count(g["lag"]), count(g["in_flight"]),
                     count(delayed(g)), human_age(g["oldest_unacked_age"]), count(g["dead_letters"])])
        if per_partition:
            for p, v in g["partitions"].items():
                rows.append(["", f"  [{p}] committed {v['committed']:,}", "", "", count(v["lag"]),
                             count(v["in_flight"]), count(v["delayed"]), human_age(v["oldest_unacked_age"]),
                             count(v["dead_letters"])])
    return rows


def groups_table(rows: list[list[str]]) -> Any:
    from rich.table import Table
    table = Table("topic", "group", "mode", "members", "lag", "in flight", "delayed", "oldest unacked",
                  "dead letters", box=None, pad_edge=False)
    for col in table.columns[3:]:
        col.justify = "right"
    for r in rows:
        table.add_row(*r)
    return table


@click.command()
@path_option
@click.argument("topics", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print broker.stats() as JSON.")
def stats(path: Optional[str], topics: tuple[str, ...], as_json: bool) -> None:
    """Offsets, sizes, depth and groups of TOPICS (default: every topic)."""
    with open_broker(path) as b:
        data = {t.name: t.stats() for t in topics_of(b, topics)}
        if as_json:
            if isinstance(b, pyqueue.Broker):
                print_json({"path": b.path, "topics": data})
            else:
                print_json({"url": b.url, "namespace": b.names.ns, "topics": data})
            return
        from rich.table import Table
        out = console()
        if not data:
            out.print(f"no topics in {where(b)}")
        for name, st in data.items():
            parts = st["partitions"]
            total = sum(p["messages"] for p in parts.values())
            nbytes = sum(p["bytes"] for p in parts.values())
            cfg = st["config"]
            out.print(f"[bold]{name}[/bold]: {len(parts)} partition{'s' if len(parts) != 1 else ''}, "
                      f"{total:,} messages, {human_bytes(nbytes)}, depth {st['depth']:,}"
                      + (f" of max {cfg['max_depth']:,}" if cfg.get("max_depth") else ""))
            table = Table("partition", "start", "end", "messages", "depth", "segments", "bytes", "synced to",
                          box=None, pad_edge=False)
            for col in table.columns:
                col.justify = "right"
            for p, v in parts.items():
                table.add_row(str(p), f"{v['start']:,}", f"{v['end']:,}", f"{v['messages']:,}", f"{v['depth']:,}",
                              count(v["segments"]), human_bytes(v["bytes"]), count(v["synced"]))
            out.print(table)
            if st["groups"]:
                out.print(groups_table(group_rows(name, st["groups"])))
            out.print()


@click.command()
@path_option
@click.argument("topics", nargs=-1)
@click.option("--partitions", "per_partition", is_flag=True, help="One row per partition too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def groups(path: Optional[str], topics: tuple[str, ...], per_partition: bool, as_json: bool) -> None:
    """Consumer groups of TOPICS (default: every topic): lag, in flight,
    delayed, age of the oldest unacked message, dead letters."""
    with open_broker(path) as b:
        data = {t.name: t.stats()["groups"] for t in topics_of(b, topics)}
        if as_json:
            print_json(data)
            return
        rows = [r for name, gs in data.items() for r in group_rows(name, gs, per_partition)]
        if not rows:
            click.echo("no consumer groups")
            return
        console().print(groups_table(rows))
