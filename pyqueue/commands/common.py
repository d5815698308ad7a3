"""What every command shares: finding and opening the broker, turning
library errors into one-line messages, the console, and value formats.

A broker is a directory, or a JetStream cluster: `--path` (or
$PYQUEUE_PATH) holding a URL "nats://host:port,..." (or tls://) opens
pyqueue.connect(url, namespace=...), the namespace from `--namespace` (or
$PYQUEUE_NAMESPACE, default "pq").  Commands that exist only for the
embedded engine (verify, bench) refuse a URL with one line (embedded_only).

Exit codes: 0 success, 1 an error the command reports (no broker, unknown
topic, corruption found by verify...), 2 bad usage (click's own).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
import threading
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

import click

import pyqueue
from pyqueue.errors import PyQueueError, UnknownTopic

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker
    from pyqueue.jetstream.message import JsMessage
    from pyqueue.jetstream.topic import JetStreamTopic

PATH_ENV = "PYQUEUE_PATH"
NAMESPACE_ENV = "PYQUEUE_NAMESPACE"
DEFAULT_NAMESPACE = "pq"
URL_SCHEMES = ("nats://", "tls://")
F = TypeVar("F", bound=Callable[..., Any])

# What a command works on: a broker directory or a JetStream cluster.
AnyBroker = Union[pyqueue.Broker, "JetStreamBroker"]
AnyTopic = Union[pyqueue.Topic, "JetStreamTopic"]
AnyMessage = Union[pyqueue.Message, "JsMessage"]


class PyQueueGroup(click.Group):
    """A click group that reports pyqueue and OS errors as one line on
    stderr with exit code 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PyQueueError as e:
            raise click.ClickException(str(e)) from e
        except PermissionError as e:
            raise click.ClickException(f"permission denied: {e.filename or e}") from e
        except BrokenPipeError:             # the reader of a table went away (`| head`)
            silence_stdout()
            ctx.exit(1)


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone, so that the
    interpreter's flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):           # no real file descriptor (a test runner's stream)
        pass
    finally:
        os.close(devnull)


def path_option(f: F) -> F:
    """--path DIR|URL and --namespace NS on a command; each falls back on the
    group's option, then on its environment variable."""
    f = click.option("--namespace", default=None, expose_value=False, callback=_keep_namespace,
                     help=f"Namespace on a nats:// broker (or the group's --namespace, or "
                          f"${NAMESPACE_ENV}; default {DEFAULT_NAMESPACE}).")(f)
    return click.option("--path", "path", type=click.Path(file_okay=False, path_type=str), default=None,
                        help=f"Broker directory or nats://host:port,... URL (or the group's --path, "
                             f"or ${PATH_ENV}).")(f)


def _keep_namespace(ctx: click.Context, _param: click.Parameter, value: Optional[str]) -> None:
    if value is not None:
        ctx.meta["pyqueue.namespace"] = value


def is_url(path: Optional[str]) -> bool:
    return path is not None and path.strip().lower().startswith(URL_SCHEMES)


def resolve_path(path: Optional[str]) -> str:
    if path is None:
        ctx = click.get_current_context(silent=True)
        root = ctx.find_root() if ctx is not None else None
        path = root.params.get("path") if root is not None else None
    if path is None:
        path = os.environ.get(PATH_ENV) or None
    if path is None:
        raise click.UsageError(f"no broker directory: give --path DIR (or set {PATH_ENV})")
    return path


def resolve_namespace() -> str:
    """The command's --namespace, else the group's, else $PYQUEUE_NAMESPACE, else "pq"."""
    ctx = click.get_current_context(silent=True)
    ns = ctx.meta.get("pyqueue.namespace") if ctx is not None else None   # meta is shared by the chain
    if ns is None and ctx is not None:
        ns = ctx.find_root().params.get("namespace")
    return ns or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


def open_broker(path: Optional[str], *, create: bool = False) -> AnyBroker:
    """The broker at `path`: a directory, or a cluster when `path` is a
    nats:// URL.  Only `create` makes a missing directory; an existing
    directory that is not a broker is refused, never written to."""
    path = resolve_path(path)
    if is_url(path):
        return pyqueue.connect(path.strip(), namespace=resolve_namespace())
    if not os.path.exists(path):
        if not create:
            raise click.ClickException(f"no broker at {path} (create one with: pyqueue create --path {path} TOPIC)")
    elif not os.path.isdir(path):
        raise click.ClickException(f"{path} is not a directory")
    elif not os.path.exists(os.path.join(path, "broker.json")) and (not create or os.listdir(path)):
        raise click.ClickException(f"{path} is not a pyqueue broker (it has no broker.json)")
    return pyqueue.open(path, create=create)


def embedded_only(command: str, why: str, path: Optional[str] = None, *, from_env: bool = True) -> None:
    """Refuse, in one line (exit 1), to run an embedded-only command on a URL
    (given by `path`, else the group's --path, else $PYQUEUE_PATH if from_env)."""
    if path is None:
        ctx = click.get_current_context(silent=True)
        path = ctx.find_root().params.get("path") if ctx is not None else None
    if path is None and from_env:
        path = os.environ.get(PATH_ENV) or None
    if path is not None and is_url(path):
        raise click.ClickException(f"{command} is for the embedded engine only ({why}); "
                                   f"{path.strip()} is a JetStream cluster")


def where(broker: AnyBroker) -> str:
    """How a broker is named in messages: its directory, or its URL and namespace."""
    if isinstance(broker, pyqueue.Broker):
        return broker.path
    return f"{broker.url} (namespace {broker.names.ns})"


def get_topic(broker: AnyBroker, name: str) -> AnyTopic:
    """An existing topic; a missing one is an error that lists the others."""
    try:
        return broker.topic(name, create=False)
    except UnknownTopic:
        names = broker.topics()
        hint = (f"; its topics are: {', '.join(names)}" if names
                else "; it has no topics (create one with: pyqueue create)")
        raise click.ClickException(f"no topic {name!r} in {where(broker)}{hint}") from None


def topics_of(broker: AnyBroker, names: "tuple[str, ...] | list[str]") -> list[AnyTopic]:
    """The named topics (all of them if none is named)."""
    return [get_topic(broker, n) for n in (names or broker.topics())]


# -- output --

def console(*, stderr: bool = False) -> "Any":
    """A rich Console on stdout (or stderr).  Off a terminal, lines are not
    wrapped at 80 columns (unless $COLUMNS says so) and there is no colour."""
    from rich.console import Console
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty() and "COLUMNS" not in os.environ:
        width = 200
    return Console(file=stream, width=width, highlight=False)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def count(n: Optional[int]) -> str:
    """An integer with thousands separators; "-" for None (a figure the backend cannot tell)."""
    return "-" if n is None else f"{n:,}"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n:,} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds / 86400:.1f}d"


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def text_or_b64(data: Optional[bytes]) -> Any:
    """For JSON: the text if `data` is UTF-8, else {"base64": ...}."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def shown(data: Optional[bytes], limit: int = 200) -> str:
    """A printable rendering of bytes: the text if UTF-8, else a repr; cut at `limit`."""
    if data is None:
        return "-"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = repr(data)
    return text if len(text) <= limit else text[:limit] + "…"


MESSAGE_FORMATS = ("value", "detail", "json")


def format_message(m: AnyMessage, fmt: str) -> bytes:
    """One message as one output line (with its newline)."""
    if fmt == "value":
        return bytes(m.value) + b"\n"
    if fmt == "json":
        return json.dumps({"topic": m.topic, "partition": m.partition, "offset": m.offset,
                           "timestamp": m.timestamp, "key": text_or_b64(m.key),
                           "value": text_or_b64(m.value),
                           "headers": {k: text_or_b64(v) for k, v in m.headers.items()}},
                          ensure_ascii=False).encode("utf-8") + b"\n"
    heads = "".join(f" {k}={shown(v, 60)}" for k, v in sorted(m.headers.items()))
    key = "" if m.key is None else f" key={shown(m.key, 60)}"
    line = f"{m.partition}:{m.offset} {iso_time(m.timestamp)}{key}{heads} | {shown(m.value, 10_000)}\n"
    return line.encode("utf-8", "backslashreplace")


class Output:
    """Binary stdout, flushed per message so that a follower's reader sees
    each one at once.  A closed pipe (`| head`) ends the command quietly."""

    def __init__(self) -> None:
        self.stream: IO[bytes] = sys.stdout.buffer
        self.closed = False

    def write(self, data: bytes) -> bool:
        """False once the reader has gone."""
        if self.closed:
            return False
        try:
            self.stream.write(data)
            self.stream.flush()
            return True
        except BrokenPipeError:
            self.closed = True
            silence_stdout()
            return False


# -- arguments --

def parse_headers(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, bytes]:
    """--header NAME=VALUE, repeatable."""
    out: dict[str, bytes] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}")
        out[name] = value.encode("utf-8")
    return out


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


class ByteSize(click.ParamType):
    """A byte count: 4096, 64KiB, 64MiB, 1GiB (K, M, G are powers of 1024)."""

    name = "size"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size such as 4096, 64KiB or 1GiB", param, ctx)
        return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")


# -- stopping on a signal --

class StopOnSignal:
    """While active, SIGINT and SIGTERM set `event` instead of raising
    KeyboardInterrupt in the middle of library code; loops check the event at
    their bounded waits and finish cleanly (consumers closed, positions
    committed).  A second signal while stopping interrupts at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self.event

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
