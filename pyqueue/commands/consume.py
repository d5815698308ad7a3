"""`pyqueue consume` (a group member that acks what it prints) and
`pyqueue tail` (raw replay by offset, no group; -f follows new messages).

Both stop cleanly on SIGINT/SIGTERM: the signal sets an event that the loop
checks between its waits, which are bounded (a quarter of a second), so the
consumer is closed (acked positions committed) and the exit code is 0.  A
follower sleeps on the topic's shared wake-up word, which every append from
any process bumps; it does not re-read the log on a timer.  On a JetStream
broker it waits on the partitions' subjects instead (JetStreamTopic.wait_any).
"""

from __future__ import annotations

import time
from typing import Optional

import click

import pyqueue
from pyqueue.commands.common import (MESSAGE_FORMATS, AnyTopic, Output, StopOnSignal, format_message, get_topic,
                                     open_broker, path_option)
from pyqueue.errors import OffsetOutOfRange

_WAIT = 0.25        # seconds: the longest a loop waits before it looks at the stop event
_CHUNK = 500        # messages read or leased per call


@click.command()
@path_option
@click.argument("topic")
@click.option("--group", "-g", required=True, help="Consumer group (created on first use).")
@click.option("--mode", type=click.Choice(["stream", "queue"]), default="stream", show_default=True,
              help="stream: ordered, committed position; queue: leases acked one by one.")
@click.option("--from", "start", type=click.Choice(["earliest", "latest"]), default="earliest",
              show_default=True, help="Where a new group starts.")
@click.option("-n", "--max-messages", type=click.IntRange(min=1), default=None, help="Stop after this many.")
@click.option("-f", "--follow", is_flag=True, help="Keep waiting for new messages until Ctrl-C.")
@click.option("--timeout", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Without --follow: stop after this many seconds without a message.")
@click.option("--format", "fmt", type=click.Choice(MESSAGE_FORMATS), default="value", show_default=True,
              help="value: the raw value per line; detail: partition, offset, time, key, headers; json.")
@click.option("--no-ack", is_flag=True, help="Print without acking (queue mode: redelivered after the "
                                             "visibility timeout; stream mode: position not moved).")
@click.option("--visibility-timeout", type=click.FloatRange(min=0.001, max=43200), default=30.0,
              show_default=True, help="Queue mode: seconds a delivery stays leased.")
def consume(path: Optional[str], topic: str, group: str, mode: str, start: str, max_messages: Optional[int],
            follow: bool, timeout: float, fmt: str, no_ack: bool, visibility_timeout: float) -> None:
    """Consume TOPIC as a member of GROUP: print each message, then ack it."""
    out = Output()
    count = 0
    with StopOnSignal() as stop, open_broker(path) as b:
        t = get_topic(b, topic)
        options = {"visibility_timeout": visibility_timeout} if mode == "queue" else {}
        c = t.consumer(group, mode=mode, start=start, **options)
        try:
            idle_since = time.monotonic()
            while not stop.is_set() and not out.closed and (max_messages is None or count < max_messages):
                want = _CHUNK if max_messages is None else min(_CHUNK, max_messages - count)
                msgs = c.poll_batch(want, timeout=_WAIT)
                if not msgs:
                    if not follow and time.monotonic() - idle_since >= timeout:
                        break
                    continue
                idle_since = time.monotonic()
                for m in msgs:
                    if not out.write(format_message(m, fmt)):
                        break           # unprinted messages stay unacked: they come again
                    if not no_ack:
                        m.ack()
                    count += 1
        finally:
            c.close()
    click.echo(f"consumed {count:,} message{'s' if count != 1 else ''} from {topic} as group {group}"
               + (" (not acked)" if no_ack else ""), err=True)


@click.command()
@path_option
@click.argument("topic")
@click.option("--partition", "partitions", type=click.IntRange(min=0), multiple=True,
              help="Partition to read (repeatable; default: all).")
@click.option("--offset", type=click.IntRange(min=0), default=None, help="Start at this offset of each partition.")
@click.option("--from-beginning", is_flag=True, help="Start at the first retained message.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=10, show_default=True,
              help="Start this many messages before the end of each partition.")
@click.option("-f", "--follow", is_flag=True, help="Then wait for new messages until Ctrl-C.")
@click.option("--format", "fmt", type=click.Choice(MESSAGE_FORMATS), default="value", show_default=True)
def tail(path: Optional[str], topic: str, partitions: tuple[int, ...], offset: Optional[int],
         from_beginning: bool, lines: int, follow: bool, fmt: str) -> None:
    """Print the last messages of TOPIC (raw replay: no group, no ack).

    By default the last 10 of each partition; --offset or --from-beginning
    replay from a position; -f keeps printing new messages as they are sent."""
    if offset is not None and from_beginning:
        raise click.UsageError("give --offset or --from-beginning, not both")
    out = Output()
    with StopOnSignal() as stop, open_broker(path) as b:
        t = get_topic(b, topic)
        for p in partitions:
            if p >= t.partitions:
                raise click.BadParameter(f"topic {topic!r} has partitions 0..{t.partitions - 1}",
                                         param_hint="--partition")
        parts = sorted(set(partitions)) or list(range(t.partitions))
        pos: dict[int, int] = {}
        ends: dict[int, int] = {}
        for p in parts:
            first, end = t.offsets(p)
            ends[p] = end
            if offset is not None:
                if not first <= offset <= end:
                    raise click.BadParameter(f"partition {p} of {topic!r} holds offsets {first}..{end - 1}; "
                                             f"got {offset}" if end > first else
                                             f"partition {p} of {topic!r} is empty; its next offset is {end}",
                                             param_hint="--offset")
                pos[p] = offset
            else:
                pos[p] = first if from_beginning else max(first, end - lines)
        # What was there at the start, partition by partition.
        for p in parts:
            while pos[p] < ends[p] and not stop.is_set() and not out.closed:
                pos[p] = _print_from(t, p, pos[p], ends[p] - pos[p], fmt, out)
        if not follow:
            return
        if not isinstance(t, pyqueue.Topic):          # JetStream: a wait on the partitions' subjects
            while not stop.is_set() and not out.closed:
                moved = False
                for p in parts:
                    before = pos[p]
                    pos[p] = _print_from(t, p, pos[p], _CHUNK, fmt, out)
                    moved = moved or pos[p] != before
                if not moved:
                    t.wait_any(pos, _WAIT)
            return
        notify = t.notify
        while not stop.is_set() and not out.closed:
            # Arm, then look: an append after the look wakes the sleep below.
            seq = notify.arm()
            try:
                moved = False
                for p in parts:
                    before = pos[p]
                    pos[p] = _print_from(t, p, pos[p], _CHUNK, fmt, out)
                    moved = moved or pos[p] != before
            except BaseException:
                notify.disarm()
                raise
            if moved:
                notify.disarm()
            else:
                notify.sleep(seq, _WAIT)


def _print_from(t: AnyTopic, p: int, offset: int, n: int, fmt: str, out: Output) -> int:
    """Print up to n messages of partition p from `offset`; the next offset."""
    try:
        msgs = t.read(p, offset, min(n, _CHUNK))
    except OffsetOutOfRange:
        first, _end = t.offsets(p)
        if offset >= first:
            raise
        click.echo(f"partition {p}: offsets {offset}..{first - 1} were removed by retention; "
                   f"going on from {first}", err=True)
        return first
    for m in msgs:
        if not out.write(format_message(m, fmt)):
            break
        offset = m.offset + 1
    return offset
