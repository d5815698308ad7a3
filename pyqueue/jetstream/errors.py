"""Errors particular to the JetStream backend (both are PyQueueErrors):

    PyQueueError
     +-- Unsupported     a feature of the API that this backend (or this server
     |                   version) does not provide; the message names it and why
     +-- Unavailable     the servers cannot be reached, have no JetStream, or did
                         not answer in time; the message names the URL or the
                         operation and the time allowed

Errors the embedded engine raises (ConfigError, UnknownTopic, LeaseLost, ...)
keep their meaning and class on this backend.
"""

from __future__ import annotations

from pyqueue.errors import PyQueueError

__all__ = ["Unsupported", "Unavailable"]


class Unsupported(PyQueueError, NotImplementedError):
    """The JetStream backend does not provide this feature (see the README's
    table of backend differences)."""


class Unavailable(PyQueueError, ConnectionError):
    """No JetStream server could be reached or answered in time."""
