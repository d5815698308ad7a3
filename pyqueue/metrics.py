"""Prometheus metrics of a broker: a prometheus_client Collector.

    from prometheus_client import REGISTRY
    from pyqueue.metrics import PyQueueCollector
    REGISTRY.register(PyQueueCollector(broker))

Each scrape reads broker.stats() of the watched topics: the state shared by
every process of the broker (ends of the logs, group positions, leases), so
one collector in any process reports the whole broker, and nothing is
counted on the hot path.  A topic that cannot be read (damaged, deleted
meanwhile) gets pyqueue_topic_up 0 and no other series; the scrape goes on.

The broker may be a JetStream one (pyqueue.connect): the names and labels
are the same; a figure its stats() reports as None (segments; delayed
messages and queue-mode members, which the server does not tell) has no
series there.

Metrics (labels in braces):

    pyqueue_topic_up{topic}                               1 if the topic's stats could be read
    pyqueue_topic_partitions{topic}                       partitions
    pyqueue_topic_depth{topic}                            unfinished messages (what max_depth bounds)
    pyqueue_topic_max_depth{topic}                        max_depth, for topics that have one
    pyqueue_topic_start_offset{topic,partition}           first retained offset
    pyqueue_topic_end_offset{topic,partition}             next offset to be written (rate() = sends/s)
    pyqueue_partition_messages{topic,partition}           retained messages
    pyqueue_partition_bytes{topic,partition}              bytes of the segment files on disk
    pyqueue_partition_segments{topic,partition}           segment files
    pyqueue_group_members{topic,group,mode}               live members of the group
    pyqueue_group_committed_offset{topic,group,partition} the group's committed position
    pyqueue_group_lag{topic,group,partition}              messages after the committed position
    pyqueue_group_in_flight{topic,group,partition}        leased, not yet acked (queue mode)
    pyqueue_group_delayed{topic,group,partition}          waiting out a delay or a retry backoff
    pyqueue_group_oldest_unacked_age_seconds{topic,group,partition}
                                                          age of the oldest message not yet
                                                          acked (0 when there is none)
    pyqueue_group_dead_letters_total{topic,group,partition}
                                                          messages sent to the dead-letter topic (counter)
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pyqueue.errors import PyQueueError

__all__ = ["PyQueueCollector"]

_T, _TP, _TG, _TGP = ("topic",), ("topic", "partition"), ("topic", "group", "mode"), ("topic", "group", "partition")

# name -> (kind, help, labels)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pyqueue_topic_up": ("gauge", "1 if the topic's state could be read, else 0.", _T),
    "pyqueue_topic_partitions": ("gauge", "Partitions of the topic.", _T),
    "pyqueue_topic_depth": ("gauge", "Messages after the slowest group's committed position (what max_depth bounds).", _T),
    "pyqueue_topic_max_depth": ("gauge", "The topic's max_depth (backpressure bound).", _T),
    "pyqueue_topic_start_offset": ("gauge", "First retained offset of the partition.", _TP),
    "pyqueue_topic_end_offset": ("gauge", "Next offset to be written in the partition.", _TP),
    "pyqueue_partition_messages": ("gauge", "Messages retained in the partition.", _TP),
    "pyqueue_partition_bytes": ("gauge", "Bytes of the partition's segment files on disk.", _TP),
    "pyqueue_partition_segments": ("gauge", "Segment files of the partition.", _TP),
    "pyqueue_group_members": ("gauge", "Live members of the consumer group.", _TG),
    "pyqueue_group_committed_offset": ("gauge", "Committed position of the group in the partition.", _TGP),
    "pyqueue_group_lag": ("gauge", "Messages after the group's committed position.", _TGP),
    "pyqueue_group_in_flight": ("gauge", "Messages leased to a member and not yet acked.", _TGP),
    "pyqueue_group_delayed": ("gauge", "Messages waiting out a delay or a retry backoff.", _TGP),
    "pyqueue_group_oldest_unacked_age_seconds": ("gauge", "Age of the oldest message the group has not acked "
                                                 "(0 when there is none).", _TGP),
    "pyqueue_group_dead_letters_total": ("counter", "Messages the group sent to its dead-letter topic.", _TGP),
}


class PyQueueCollector(Collector):
    """Collects the metrics above from `broker` at each scrape.

    topics: the names to report (default: every topic of the broker, listed
    again at each scrape so that new topics appear)."""

    def __init__(self, broker: Any, *, topics: Optional[Iterable[str]] = None) -> None:
        self.broker = broker
        self.topics = None if topics is None else list(topics)

    def describe(self) -> list[Metric]:
        """The families without samples: registering costs no broker read."""
        return list(_families().values())

    def collect(self) -> Iterator[Metric]:
        fam = _families()

        def add(metric: str, labels: list[str], value: Optional[float]) -> None:
            if value is not None:                   # None: the backend cannot tell
                fam[metric].add_metric(labels, value)

        for name in (self.topics if self.topics is not None else self.broker.topics()):
            try:
                st = self.broker.topic(name, create=False).stats()
            except PyQueueError:
                fam["pyqueue_topic_up"].add_metric([name], 0)
                continue
            fam["pyqueue_topic_up"].add_metric([name], 1)
            fam["pyqueue_topic_partitions"].add_metric([name], len(st["partitions"]))
            add("pyqueue_topic_depth", [name], st["depth"])
            if st["config"].get("max_depth"):
                fam["pyqueue_topic_max_depth"].add_metric([name], st["config"]["max_depth"])
            for p, v in st["partitions"].items():
                labels = [name, str(p)]
                add("pyqueue_topic_start_offset", labels, v["start"])
                add("pyqueue_topic_end_offset", labels, v["end"])
                add("pyqueue_partition_messages", labels, v["messages"])
                add("pyqueue_partition_bytes", labels, v["bytes"])
                add("pyqueue_partition_segments", labels, v["segments"])
            for group, g in st["groups"].items():
                add("pyqueue_group_members", [name, group, g["mode"]], g["members"])
                for p, v in g["partitions"].items():
                    labels = [name, group, str(p)]
                    add("pyqueue_group_committed_offset", labels, v["committed"])
                    add("pyqueue_group_lag", labels, v["lag"])
                    add("pyqueue_group_in_flight", labels, v["in_flight"])
                    add("pyqueue_group_delayed", labels, v["delayed"])
                    add("pyqueue_group_oldest_unacked_age_seconds", labels, v["oldest_unacked_age"] or 0.0)
                    add("pyqueue_group_dead_letters_total", labels, v["dead_letters"])
        yield from fam.values()


def _families() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (kind, doc, labels) in METRICS.items():
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        out[name] = cls(name, doc, labels=list(labels))
    return out
