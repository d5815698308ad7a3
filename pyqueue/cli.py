"""The `pyqueue` command line: the group, the demo, and the broker commands
(each in its own module under pyqueue/commands/)."""

from __future__ import annotations

import sys
from typing import Optional

import click

import pyqueue
from pyqueue.commands.common import PATH_ENV, PyQueueGroup


@click.group(cls=PyQueueGroup)
@click.version_option(pyqueue.__version__, prog_name="pyqueue")
@click.option("--path", type=click.Path(file_okay=False, path_type=str), default=None,
              help=f"Broker directory for the command that follows (or ${PATH_ENV}).")
def main(path: Optional[str]) -> None:
    """pyqueue: an embedded, durable, multi-process message queue. A broker is a directory."""


@main.command()
@click.option("--path", type=click.Path(file_okay=False), default=None,
              help="Broker directory to use (default: a temporary one, removed afterwards).")
@click.option("--messages", type=click.IntRange(1, 10_000_000), default=20_000, show_default=True)
def demo(path: Optional[str], messages: int) -> None:
    """Produce and consume through two processes, then survive a SIGKILL."""
    from pyqueue import demo as demo_mod
    summary = demo_mod.run(path, messages, echo=click.echo)
    if summary["lost_after_kill"]:
        sys.exit(1)


def _register() -> None:
    from pyqueue.commands import bench, consume, dlq, metrics, produce, schedules, stats, top, topics, verify
    for command in (topics.topics, topics.create, produce.produce, consume.consume, consume.tail,
                    stats.stats, stats.groups, dlq.dlq, schedules.schedules, verify.verify, top.top,
                    metrics.metrics, bench.bench):
        main.add_command(command)


_register()


if __name__ == "__main__":   # pragma: no cover
    main()
