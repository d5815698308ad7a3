"""The `pyqueue` command line: the group, the demo, and the broker commands
(each in its own module under pyqueue/commands/)."""

from __future__ import annotations

import sys
from typing import Optional

import click

import pyqueue
from pyqueue.commands.common import DEFAULT_NAMESPACE, NAMESPACE_ENV, PATH_ENV, PyQueueGroup


@click.group(cls=PyQueueGroup)
@click.version_option(pyqueue.__version__, prog_name="pyqueue")
@click.option("--path", type=click.Path(file_okay=False, path_type=str), default=None,
              help=f"Broker directory, or nats://host:port,... URL of a JetStream cluster, for the "
                   f"command that follows (or ${PATH_ENV}).")
@click.option("--namespace", default=None,
              help=f"Namespace on a nats:// broker (or ${NAMESPACE_ENV}; default {DEFAULT_NAMESPACE}).")
def main(path: Optional[str], namespace: Optional[str]) -> None:
    """pyqueue: an embedded, durable, multi-process message queue. A broker is
    a directory, or a NATS JetStream cluster given as --path nats://host:port,..."""


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


def _register() -> None:
    from pyqueue.commands import bench, consume, dlq, metrics, produce, schedules, stats, top, topics, verify
    for command in (topics.topics, topics.create, produce.produce, consume.consume, consume.tail,
                    stats.stats, stats.groups, dlq.dlq, schedules.schedules, verify.verify, top.top,
                    metrics.metrics, bench.bench):
        main.add_command(command)


_register()


from pyqueue.cli_jobs import register as _register_jobs  # noqa: E402
_register_jobs(main)


if __name__ == "__main__":   # pragma: no cover
    main()
