"""pyqueue: an embedded, durable, multi-process message queue, log and job
scheduler.  A broker is a directory; open it with pyqueue.open(path)."""

from typing import Any

from pyqueue._native import Message, Receipt, TimerWheel
from pyqueue.broker import Broker, open
from pyqueue.config import TopicConfig
from pyqueue.policy import Backoff
from pyqueue.errors import (Closed, ConfigError, CorruptionError, InvalidName, LeaseLost,
                            MemberFenced, MessageTooLarge, OffsetOutOfRange, PartitionOutOfRange,
                            PyQueueError, QueueFull, StorageError, TableFull, UnknownTopic)
from pyqueue.record_batch import RecordBatch
from pyqueue.topic import BatchReceipt, Topic

__version__ = "0.1.0"


def connect(url: str, **options: object) -> "Any":
    """Connect to a NATS JetStream cluster ("nats://host:port,..."): a broker
    with the same API as open(path); see pyqueue.jetstream.connect for the
    options.  Needs nats-py: pip install 'pyqueue[jetstream]'."""
    from pyqueue.jetstream import connect as _connect
    return _connect(url, **options)  # type: ignore[arg-type]


__all__ = [
    "open", "connect", "Broker", "TimerWheel", "Backoff", "Topic", "TopicConfig", "Message", "Receipt", "BatchReceipt", "RecordBatch",
    "PyQueueError", "ConfigError", "InvalidName", "MessageTooLarge", "QueueFull", "CorruptionError",
    "OffsetOutOfRange", "PartitionOutOfRange", "UnknownTopic", "LeaseLost", "MemberFenced", "TableFull",
    "Closed", "StorageError",
]

_JOBS_NAMES = ("Jobs", "JobDefinition", "JobStatus", "UnknownJob", "JobFailed", "ResultTimeout", "ResultTooLarge")
__all__ += list(_JOBS_NAMES)


def __getattr__(name: str):   # the jobs API loads on first use (it imports msgspec)
    if name in _JOBS_NAMES:
        import pyqueue.jobs
        return getattr(pyqueue.jobs, name)
    raise AttributeError(f"module 'pyqueue' has no attribute {name!r}")
