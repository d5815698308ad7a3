"""The jobs commands of the `pyqueue` command line: `pyqueue worker` and
`pyqueue jobs list | status | cancel | workers`.  Each takes a broker
directory (--path) or a JetStream cluster (--url, with --namespace)."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any, Callable, Optional

import click

import pyqueue
from pyqueue.commands.common import is_url, resolve_namespace, resolve_path
from pyqueue.jobs.status import STATES

__all__ = ["register"]


def _where(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options that name the broker: --path (a directory, or a nats://
    URL), or --url, and --namespace."""
    f = click.option("--namespace", default=None,
                     help="On a cluster: the namespace of the topics and jobs (default: the group's "
                          "--namespace, $PYQUEUE_NAMESPACE or pq).")(f)
    f = click.option("--url", default=None,
                     help="A JetStream cluster instead: nats://host:port[,nats://host:port...].")(f)
    return click.option("--path", default=None, type=click.Path(file_okay=False, path_type=str),
                        help="Broker directory or nats:// URL (or the group's --path, or $PYQUEUE_PATH).")(f)


def _open(path: Optional[str], url: Optional[str], namespace: Optional[str]) -> Any:
    """pyqueue.Broker or JetStreamBroker (their jobs() differ in options)."""
    if path is not None and url is not None:
        raise click.UsageError("give the broker as --path DIRECTORY or as --url nats://..., not both")
    if url is None:
        path = resolve_path(path)
        if is_url(path):
            url = path
    try:
        if url is not None:
            return pyqueue.connect(url.strip(), namespace=namespace or resolve_namespace())
        assert path is not None
        return pyqueue.open(path, create=False)
    except pyqueue.PyQueueError as e:
        raise click.ClickException(str(e)) from e


def _when(t: Optional[float]) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="milliseconds")


@click.command()
@_where
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Child processes running jobs.")
@click.option("--queue", default="jobs", show_default=True, help="The queue (topic) to take jobs from.")
@click.option("--grace", type=float, default=30.0, show_default=True,
              help="Seconds a stop (SIGTERM) waits for running jobs before returning them to the queue.")
@click.option("--keep", type=float, default=None, help="Seconds finished jobs are kept (default one day).")
@click.option("--no-scheduler", is_flag=True, help="Do not run the broker's scheduler in this worker.")
def worker(path: Optional[str], url: Optional[str], namespace: Optional[str], concurrency: int, queue: str, grace: float,
           keep: Optional[float], no_scheduler: bool) -> None:
    """Run jobs from a queue in a pool of child processes until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with _open(path, url, namespace) as b:
        try:
            jobs = b.jobs(keep=keep) if keep is not None else b.jobs()
            n = jobs.work(concurrency=concurrency, queue=queue, grace=grace, scheduler=not no_scheduler)
        except pyqueue.PyQueueError as e:
            raise click.ClickException(str(e)) from e
    click.echo(f"stopped after {n} job outcomes", err=True)


@click.group("jobs")
def jobs_group() -> None:
    """Inspect and cancel jobs."""


@jobs_group.command("list")
@_where
@click.option("--state", type=click.Choice(STATES), default=None)
@click.option("--name", default=None, help="Only jobs of this definition.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
def list_jobs(path: Optional[str], url: Optional[str], namespace: Optional[str], state: Optional[str], name: Optional[str],
              limit: int) -> None:
    """Jobs, newest first: id, name, state, attempts, queued, started, finished."""
    with _open(path, url, namespace) as b:
        for s in b.jobs().list(state=state, name=name, limit=limit):
            click.echo("\t".join([s.id, s.name, s.state, str(s.attempts), _when(s.queued_at), _when(s.started_at),
                                  _when(s.finished_at)]))


@jobs_group.command("status")
@_where
@click.argument("job_id")
def status(path: Optional[str], url: Optional[str], namespace: Optional[str], job_id: str) -> None:
    """One job's status as JSON."""
    with _open(path, url, namespace) as b:
        try:
            st = b.jobs().status(job_id)
        except pyqueue.PyQueueError as e:
            raise click.ClickException(str(e)) from e
        click.echo(json.dumps(st.to_dict(), indent=2))


@jobs_group.command("cancel")
@_where
@click.argument("job_ids", nargs=-1, required=True)
def cancel(path: Optional[str], url: Optional[str], namespace: Optional[str], job_ids: tuple[str, ...]) -> None:
    """Cancel jobs (queued ones never run; running ones are killed)."""
    with _open(path, url, namespace) as b:
        for jid in job_ids:
            try:
                done = b.jobs().cancel(jid)
            except pyqueue.PyQueueError as e:
                raise click.ClickException(str(e)) from e
            click.echo(f"{jid}\t{'cancelled' if done else 'already ended'}")


@jobs_group.command("workers")
@_where
def workers(path: Optional[str], url: Optional[str], namespace: str) -> None:
    """Workers and their last heartbeat."""
    with _open(path, url, namespace) as b:
        for w in b.jobs().workers():
            click.echo(f"{w['host']}\tpid={w['pid']}\tqueue={w['queue']}\tconcurrency={w['concurrency']}\t"
                       f"running={w['running']}\tdone={w['done']}\theartbeat={_when(w['heartbeat_at'])}")


def register(main: click.Group) -> None:
    main.add_command(worker)
    main.add_command(jobs_group)
