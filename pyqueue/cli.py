"""The `pyqueue` command line."""

from __future__ import annotations

import sys
from typing import Optional

import click

import pyqueue


@click.group()
@click.version_option(pyqueue.__version__, prog_name="pyqueue")
def main() -> None:
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


def _open(path: str, create: bool = False) -> pyqueue.Broker:
    try:
        return pyqueue.open(path, create=create)
    except pyqueue.PyQueueError as e:
        raise click.ClickException(str(e)) from e


@main.command()
@click.option("--path", required=True, type=click.Path(file_okay=False), help="Broker directory.")
def topics(path: str) -> None:
    """List the topics of a broker with their partitions and message counts."""
    with _open(path) as b:
        for name in b.topics():
            t = b.topic(name)
            counts = [t.offsets(p) for p in range(t.partitions)]
            total = sum(end - start for start, end in counts)
            click.echo(f"{name}\tpartitions={t.partitions}\tmessages={total}")


@main.command()
@click.option("--path", required=True, type=click.Path(file_okay=False), help="Broker directory.")
@click.argument("topic")
@click.option("--partitions", type=int, default=None)
def create(path: str, topic: str, partitions: Optional[int]) -> None:
    """Create a topic (or check an existing one's partitions)."""
    with _open(path, create=True) as b:
        try:
            t = b.topic(topic, partitions=partitions)
        except pyqueue.PyQueueError as e:
            raise click.ClickException(str(e)) from e
        click.echo(f"{t.name}\tpartitions={t.partitions}")


from pyqueue.cli_jobs import register as _register_jobs  # noqa: E402
_register_jobs(main)


if __name__ == "__main__":   # pragma: no cover
    main()
