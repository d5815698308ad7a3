"""`pyqueue produce`: one message per input line, from stdin or files."""

from __future__ import annotations

import sys
from typing import IO, Optional

import click

from pyqueue.commands.common import get_topic, open_broker, parse_headers, path_option
from pyqueue.errors import PyQueueError


@click.command()
@path_option
@click.argument("topic")
@click.argument("files", nargs=-1, type=click.File("rb"))
@click.option("--key", default=None, help="Key of every message (chooses the partition).")
@click.option("--key-separator", default=None, metavar="SEP",
              help="Split each line at the first SEP into key and value.")
@click.option("--partition", type=click.IntRange(min=0), default=None,
              help="Partition to write to (default: by key, else round robin).")
@click.option("--header", "headers", multiple=True, callback=parse_headers, metavar="NAME=VALUE",
              help="A header of every message; repeatable.")
@click.option("--delay", type=click.FloatRange(min=0), default=None,
              help="Seconds before queue-mode consumers see the messages.")
@click.option("--skip-empty", is_flag=True, help="Do not send empty lines.")
def produce(path: Optional[str], topic: str, files: tuple[IO[bytes], ...], key: Optional[str],
            key_separator: Optional[str], partition: Optional[int], headers: dict[str, bytes],
            delay: Optional[float], skip_empty: bool) -> None:
    """Send each line of FILES (or of stdin) to TOPIC as one message.

    Lines are bytes, sent without their newline.  The command returns once
    the messages are on disk (the broker's close flushes them)."""
    if key is not None and key_separator is not None:
        raise click.UsageError("give --key or --key-separator, not both")
    sep = None if key_separator is None else key_separator.encode("utf-8")
    if sep == b"":
        raise click.BadParameter("must not be empty", param_hint="--key-separator")
    fixed_key = None if key is None else key.encode("utf-8")
    sources = files or (sys.stdin.buffer,)
    if not files and sys.stdin.isatty():
        click.echo("reading messages from stdin, one per line (Ctrl-D to end)", err=True)
    sent = 0
    with open_broker(path) as b:
        t = get_topic(b, topic)
        if partition is not None and partition >= t.partitions:
            raise click.BadParameter(f"topic {topic!r} has partitions 0..{t.partitions - 1}",
                                     param_hint="--partition")
        for source in sources:
            name = getattr(source, "name", "<stdin>")
            for lineno, line in enumerate(source, 1):
                value = line[:-1] if line.endswith(b"\n") else line
                if skip_empty and not value:
                    continue
                k = fixed_key
                if sep is not None:
                    if sep not in value:
                        raise click.ClickException(f"{name}:{lineno}: no key separator {key_separator!r} "
                                                   f"({sent} messages sent before it)")
                    k, value = value.split(sep, 1)
                try:
                    t.send(value, key=k, headers=headers or None, partition=partition, delay=delay)
                except PyQueueError as e:
                    raise click.ClickException(f"{name}:{lineno}: {e} ({sent} messages sent before it)") from e
                sent += 1
    click.echo(f"sent {sent:,} message{'s' if sent != 1 else ''} to {topic}", err=True)
