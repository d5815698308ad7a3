"""`pyqueue schedules list|add|remove|run`: the broker's durable schedules
(broker.scheduler()); `run` is the scheduler loop in the foreground.  On a
backend without a scheduler, its Unsupported is the one-line error."""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Any, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click

import pyqueue
from pyqueue.commands.common import (AnyBroker, StopOnSignal, console, get_topic, open_broker, parse_headers,
                                     path_option, print_json, shown, where)

_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|)\s*$")


class Duration(click.ParamType):
    """Seconds: 5, 2.5, 500ms, 10m, 1h, 1d."""

    name = "duration"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        m = _DURATION.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a duration such as 30, 500ms, 10m or 1h", param, ctx)
        return float(m.group(1)) * _UNITS[m.group(2)]


def parse_time(text: Optional[str], tz_name: Optional[str], option: str) -> Optional[datetime]:
    """An ISO 8601 time; without a UTC offset it is read in --timezone (default UTC)."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time such as 2027-01-01T09:00:00+01:00",
                                 param_hint=option) from None
    if when.tzinfo is None:
        try:
            when = when.replace(tzinfo=ZoneInfo(tz_name or "UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            raise click.BadParameter(f"unknown time zone {tz_name!r}", param_hint="--timezone") from None
    return when


def _has_scheduler(b: AnyBroker) -> bool:
    """False if the broker directory has no scheduler files yet; a cluster's
    broker is asked (its scheduler() says whether it has one)."""
    if not isinstance(b, pyqueue.Broker):
        return True
    return os.path.exists(os.path.join(b.path, "scheduler", "schedules.db"))


@click.group()
def schedules() -> None:
    """Durable schedules that publish a message to a topic when due."""


@schedules.command("list")
@path_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(path: Optional[str], as_json: bool) -> None:
    """The schedules, with their last and next fire times."""
    with open_broker(path) as b:
        rows = []
        if _has_scheduler(b):                   # listing does not create the scheduler's files
            s = b.scheduler()
            for spec in s.list():
                info = s.info(spec.id) or {}
                rows.append({"id": spec.id, "topic": spec.topic, "when": spec.describe(),
                             "cron": spec.cron, "every": spec.every, "timezone": spec.timezone,
                             "misfire": spec.misfire, "value": shown(spec.value),
                             "last_fire": info.get("last_fire"), "next_fire": info.get("next_fire"),
                             "fires": info.get("fires", 0)})
        if as_json:
            print_json(rows)
            return
        if not rows:
            click.echo("no schedules")
            return
        from rich.table import Table
        table = Table("id", "topic", "when", "next fire", "last fire", "fires", "value", box=None, pad_edge=False)
        table.columns[5].justify = "right"
        for r in rows:
            table.add_row(r["id"], r["topic"], r["when"], r["next_fire"] or "-", r["last_fire"] or "-",
                          str(r["fires"]), shown(r["value"].encode(), 40))
        console().print(table)


@schedules.command()
@path_option
@click.argument("schedule_id", metavar="ID")
@click.option("--topic", required=True, help="Topic the schedule publishes to.")
@click.option("--value", default="", help="Value of each message (text).")
@click.option("--key", default=None, help="Key of each message.")
@click.option("--header", "headers", multiple=True, callback=parse_headers, metavar="NAME=VALUE",
              help="A header of each message; repeatable.")
@click.option("--cron", default=None, help="Cron expression, e.g. '0 2 * * *'.")
@click.option("--every", type=Duration(), default=None, help="Interval, e.g. 30, 500ms, 10m, 1h.")
@click.option("--at", default=None, help="One-off ISO 8601 time, e.g. 2027-01-01T09:00:00.")
@click.option("--timezone", default=None, help="IANA time zone of --cron (and of times without an offset).")
@click.option("--start", default=None, help="No fire before this ISO 8601 time.")
@click.option("--end", default=None, help="No fire after this ISO 8601 time.")
@click.option("--misfire", type=click.Choice(["coalesce", "skip", "all"]), default="coalesce", show_default=True,
              help="What to do with fire times missed while no scheduler ran.")
def add(path: Optional[str], schedule_id: str, topic: str, value: str, key: Optional[str],
        headers: dict[str, bytes], cron: Optional[str], every: Optional[float], at: Optional[str],
        timezone: Optional[str], start: Optional[str], end: Optional[str], misfire: str) -> None:
    """Add schedule ID (or replace it, keeping what it has fired).  Give
    exactly one of --cron, --every, --at."""
    kinds = [name for name, v in (("--cron", cron), ("--every", every), ("--at", at)) if v is not None]
    if len(kinds) != 1:
        raise click.UsageError(f"give exactly one of --cron, --every, --at (got {', '.join(kinds) or 'none'})")
    with open_broker(path) as b:
        get_topic(b, topic)
        s = b.scheduler()
        spec = s.add(schedule_id, topic=topic, value=value.encode("utf-8"),
                     key=None if key is None else key.encode("utf-8"), headers=headers or None, cron=cron,
                     every=every, at=parse_time(at, timezone, "--at"), timezone=timezone,
                     start=parse_time(start, timezone, "--start"), end=parse_time(end, timezone, "--end"),
                     misfire=misfire)
        info = s.info(spec.id) or {}
        click.echo(f"schedule {spec.id}: {spec.describe()} -> {spec.topic}; "
                   f"next fire {info.get('next_fire') or 'none'}")


@schedules.command()
@path_option
@click.argument("schedule_id", metavar="ID")
def remove(path: Optional[str], schedule_id: str) -> None:
    """Remove schedule ID."""
    with open_broker(path) as b:
        if not _has_scheduler(b) or not b.scheduler().remove(schedule_id):
            raise click.ClickException(f"no schedule {schedule_id!r} in {where(b)}")
        click.echo(f"removed schedule {schedule_id}")


@schedules.command()
@path_option
def run(path: Optional[str]) -> None:
    """Run the scheduler until Ctrl-C: active if no other scheduler of the
    broker is, else standing by to take over."""
    with StopOnSignal() as stop, open_broker(path) as b:
        s = b.scheduler()
        s.start()
        click.echo(f"scheduler running on {where(b)} (Ctrl-C to stop)", err=True)
        try:
            stop.wait()
        finally:
            s.stop()
        click.echo(f"scheduler stopped; {s.fires} message{'s' if s.fires != 1 else ''} published", err=True)
