"""`pyqueue metrics`: serve a broker's Prometheus metrics over HTTP
(pyqueue.metrics.PyQueueCollector in a registry of its own)."""

from __future__ import annotations

from typing import Optional

import click

from pyqueue.commands.common import StopOnSignal, get_topic, open_broker, path_option, where


@click.command()
@path_option
@click.argument("topics", nargs=-1)
@click.option("--port", type=click.IntRange(0, 65535), default=9464, show_default=True,
              help="TCP port (0: any free port, printed at start).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
def metrics(path: Optional[str], topics: tuple[str, ...], port: int, host: str) -> None:
    """Serve the metrics of TOPICS (default: every topic, new ones included)
    at http://HOST:PORT/metrics until Ctrl-C."""
    from prometheus_client import CollectorRegistry, start_http_server

    from pyqueue.metrics import PyQueueCollector
    with StopOnSignal() as stop, open_broker(path) as b:
        for name in topics:
            get_topic(b, name)
        registry = CollectorRegistry(auto_describe=True)
        registry.register(PyQueueCollector(b, topics=topics or None))
        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        bound_host, bound_port = str(server.server_address[0]), server.server_address[1]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        click.echo(f"serving metrics of {where(b)} on http://{shown_host}:{bound_port}/metrics", err=False)
        try:
            stop.wait()
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
