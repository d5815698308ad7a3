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
              help="A new or empty broker directory, kept afterwards (default: a temporary one, removed).")
@click.option("--uploads", type=click.IntRange(20, 1_000_000), default=None,
              help="Photos to upload  [default: 2500, or 300 with --quick]")
@click.option("--workers", type=click.IntRange(2, 32), default=3, show_default=True,
              help="Worker processes in the queue-mode group (one of them is killed).")
@click.option("--quick", is_flag=True, help="A short run of a few seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line at the end.")
def demo(path: Optional[str], uploads: Optional[int], workers: int, quick: bool, as_json: bool) -> None:
    """A photo-upload pipeline: a producer with a burst, a pool of worker
    processes, a corrupt photo dead-lettered, a worker killed mid-flight and
    its upload redelivered, a recurring report; then a summary that must add up."""
    import json
    from pyqueue import demo as demo_mod
    try:
        summary = demo_mod.run(path, uploads=uploads, workers=workers, quick=quick, echo=click.echo)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(summary))
    if not summary["ok"]:
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


if __name__ == "__main__":   # pragma: no cover
    main()
