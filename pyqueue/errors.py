"""The exceptions pyqueue raises.

Every error a user can cause is a PyQueueError; wrong argument types raise
TypeError.  The tree:

    PyQueueError
     +-- ConfigError        a topic/broker option is invalid or conflicts with the stored one
     +-- InvalidName        a topic or group name breaks the naming rule
     +-- MessageTooLarge    a message exceeds max_message_bytes (nothing is written)
     +-- QueueFull          max_depth reached and the send timed out
     +-- CorruptionError    a file fails validation; the message names file and byte position
     +-- OffsetOutOfRange   an offset below the retained start or past the end
     +-- PartitionOutOfRange a partition number the topic does not have
     +-- UnknownTopic       a topic that does not exist where one must
     +-- LeaseLost          an ack/nack/extend after the lease expired and moved on
     +-- MemberFenced       a group member was declared dead and removed (it rejoins)
     +-- TableFull          a fixed-size table is full: a group's members, a topic's dedup ids
     +-- Closed             the broker, topic or consumer was closed
     +-- StorageError       the operating system refused (full disk, file-size limit,
                            permissions); also an OSError with its errno
"""

from __future__ import annotations

__all__ = [
    "PyQueueError", "ConfigError", "InvalidName", "MessageTooLarge", "QueueFull",
    "CorruptionError", "OffsetOutOfRange", "PartitionOutOfRange", "UnknownTopic",
    "LeaseLost", "MemberFenced", "TableFull", "Closed", "StorageError",
]


class PyQueueError(Exception):
    """Base class of every error pyqueue raises on purpose."""


class ConfigError(PyQueueError, ValueError):
    """An option is out of its range, or differs from the one stored with the topic."""


class InvalidName(PyQueueError, ValueError):
    """A topic or group name is not 1-249 characters of [A-Za-z0-9._-] (and not '.' or '..')."""


class MessageTooLarge(PyQueueError, ValueError):
    """A message's key + headers + value exceed the topic's max_message_bytes."""


class QueueFull(PyQueueError):
    """A send would push the topic's depth past max_depth and the timeout passed."""


class CorruptionError(PyQueueError):
    """Bytes on disk fail validation (CRC, length, magic); the message says where."""


class OffsetOutOfRange(PyQueueError, IndexError):
    """An offset below the log start (removed by retention) or past the log end."""


class PartitionOutOfRange(PyQueueError, IndexError):
    """A partition number outside 0..partitions-1 of the topic."""


class UnknownTopic(PyQueueError, KeyError):
    """The named topic does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LeaseLost(PyQueueError):
    """The message's lease expired and it was delivered to someone else."""


class MemberFenced(PyQueueError):
    """This member was removed from its group (declared dead); it must rejoin."""


class TableFull(PyQueueError):
    """A fixed-size table is full: a group's 64 member slots, or the live ids
    of a topic's dedup table (raise dedup_capacity)."""


class Closed(PyQueueError):
    """The object was closed."""


class StorageError(PyQueueError, OSError):
    """The operating system refused a storage operation (errno is set)."""
