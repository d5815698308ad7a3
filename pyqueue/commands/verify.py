"""`pyqueue verify`: read every retained record of every partition and
check its frame (length, CRC-32C, offset), reporting each damaged one.

Reading checks the frames in C (docs/FORMAT.md, "Record frame"); a read
returns the intact records before a damaged one and the next read, at the
damaged offset, raises CorruptionError naming the segment file and byte
position.  So a partition is verified in one pass of zero-copy batch reads,
stepping over each damaged record.  Opening the broker recovers a torn tail
left by a crash first, as any process's open does; a segment whose header is
damaged is reported by the open or by the read of its records.

Exit code: 0 when every record is intact, 1 when any is damaged (or a topic
cannot be opened).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import click

import pyqueue
from pyqueue.commands.common import (console, embedded_only, get_topic, human_bytes, open_broker, path_option,
                                     print_json)
from pyqueue.errors import CorruptionError, OffsetOutOfRange, PyQueueError

_CHUNK = 4096           # records per read
SHOWN = 20              # damaged records listed per partition (all are counted)


@dataclass
class PartitionReport:
    topic: str
    partition: int
    start: int = 0
    end: int = 0
    checked: int = 0
    nbytes: int = 0
    corrupt: int = 0
    # {offset, last, error}: consecutive offsets with the same error (a damaged
    # segment header fails each of its records alike) make one entry; at most SHOWN.
    errors: list[dict[str, Any]] = field(default_factory=list)

    def damaged(self, offset: int, message: str) -> None:
        self.corrupt += 1
        last = self.errors[-1] if self.errors else None
        if last is not None and last["last"] == offset - 1 and last["error"] == message:
            last["last"] = offset
        elif len(self.errors) < SHOWN:
            self.errors.append({"offset": offset, "last": offset, "error": message})


def verify_partition(t: pyqueue.Topic, p: int, report: PartitionReport, advance: Any = None) -> None:
    """Check records start..end of partition p (the bounds when called);
    `advance(n)` is told of every n records looked at."""
    log = t._log(p)                   # the native Log: read_batch needs no numpy
    start, end = log.bounds()
    report.start, report.end = start, end
    off = start
    while off < end:
        try:
            _buf, offsets, _pos, lengths, _ts = log.read_batch(off, min(_CHUNK, end - off))
        except OffsetOutOfRange:
            first = log.bounds()[0]
            if first <= off:
                raise
            if advance:                # removed by retention meanwhile: not damage
                advance(first - off)
            off = first
            continue
        except PyQueueError as e:      # CorruptionError, or a segment file missing or unreadable
            report.damaged(off, str(e))
            off += 1
            if advance:
                advance(1)
            continue
        n = len(offsets)
        if n == 0:
            break
        report.checked += n
        report.nbytes += sum(lengths)
        off += n
        if advance:
            advance(n)


@click.command()
@path_option
@click.argument("topics", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(path: Optional[str], topics: tuple[str, ...], as_json: bool) -> None:
    """Check the CRC of every record of TOPICS (default: every topic).

    Exits with 1 if any record is damaged, naming each by partition, offset,
    segment file and byte position."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    embedded_only("verify", "it checks the CRC of the segment files on disk", path)
    reports: list[PartitionReport] = []
    unopenable: list[tuple[str, str]] = []
    with open_broker(path) as b:
        assert isinstance(b, pyqueue.Broker)
        opened: list[pyqueue.Topic] = []
        for name in (topics or b.topics()):
            try:
                t = get_topic(b, name)
                assert isinstance(t, pyqueue.Topic)
                opened.append(t)
            except CorruptionError as e:
                unopenable.append((name, str(e)))
        total = sum(end - start for t in opened for start, end in (t.offsets(p) for p in range(t.partitions)))
        err = console(stderr=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, disable=as_json or not err.is_terminal) as bar:
            task = bar.add_task("verify", total=total)
            for t in opened:
                for p in range(t.partitions):
                    report = PartitionReport(t.name, p)
                    reports.append(report)
                    bar.update(task, description=f"{t.name}[{p}]")
                    verify_partition(t, p, report, lambda n: bar.advance(task, n))
    corrupt = sum(r.corrupt for r in reports)
    if as_json:
        print_json({"ok": not corrupt and not unopenable, "records": sum(r.checked for r in reports),
                    "corrupt": corrupt, "unopenable_topics": dict(unopenable),
                    "partitions": [r.__dict__ for r in reports]})
    else:
        _print_report(reports, unopenable)
    if corrupt or unopenable:
        click.get_current_context().exit(1)


def _print_report(reports: list[PartitionReport], unopenable: list[tuple[str, str]]) -> None:
    from rich.table import Table
    out = console()
    table = Table("topic", "partition", "offsets", "records", "value bytes", "damaged", box=None, pad_edge=False)
    for col in table.columns[1:]:
        col.justify = "right"
    for r in reports:
        table.add_row(r.topic, str(r.partition), f"{r.start:,}..{r.end - 1:,}" if r.end > r.start else "-", f"{r.checked:,}", human_bytes(r.nbytes),
                      f"[red]{r.corrupt:,}[/red]" if r.corrupt else "0")
    if reports:
        out.print(table)
    for r in reports:
        shown = 0
        for e in r.errors:
            where = (f"offset {e['offset']}" if e["last"] == e["offset"]
                     else f"offsets {e['offset']}..{e['last']}")
            out.print(f"[red]damaged[/red] {r.topic}[{r.partition}] {where}: {e['error']}", soft_wrap=True)
            shown += e["last"] - e["offset"] + 1
        if r.corrupt > shown:
            out.print(f"  ... and {r.corrupt - shown:,} more damaged records in {r.topic}[{r.partition}]")
    for name, message in unopenable:
        out.print(f"[red]cannot open[/red] topic {name}: {message}", soft_wrap=True)
    records = sum(r.checked for r in reports)
    corrupt = sum(r.corrupt for r in reports)
    parts = len(reports)
    summary = (f"{records:,} records in {parts} partition{'s' if parts != 1 else ''} checked: ")
    if corrupt or unopenable:
        out.print(summary + f"[bold red]CORRUPT[/bold red]: {corrupt:,} damaged record{'s' if corrupt != 1 else ''}"
                  + (f", {len(unopenable)} topic{'s' if len(unopenable) != 1 else ''} unreadable" if unopenable else ""))
    else:
        out.print(summary + "[bold green]OK[/bold green]")
