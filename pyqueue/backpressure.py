"""max_depth: producers wait while a topic holds too much unfinished work.

Depth is counted per topic: for each partition, the messages after the
slowest consumer group's committed position (every group with state on the
topic counts, so delete a group you no longer read with Topic.delete_group),
or after the retained start when the topic has no group.  Committed positions
only move forward, so a depth computed from remembered positions is an upper
bound: a send checks that bound first (reading only the end offsets) and reads
the groups' state only when the bound says the topic may be full.  A waiting
producer sleeps on the topic's wake-up word, which acks and commits bump.
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING, Optional

from pyqueue._native import probe_group
from pyqueue.errors import QueueFull, StorageError

if TYPE_CHECKING:
    from pyqueue.topic import Topic

_RECHECK = 0.25   # seconds between depth checks while waiting (a backstop for missed wakes)


class Backpressure:
    def __init__(self, topic: "Topic") -> None:
        self.topic = topic
        self.max_depth = topic.config.max_depth or 0
        self._floors: Optional[list[int]] = None

    def _refresh_floors(self) -> list[int]:
        t = self.topic
        floors = [t._logs[p].bounds()[0] for p in range(t.partitions)]
        slowest: list[Optional[int]] = [None] * t.partitions
        for name in t.groups():
            try:
                mode, _parts, window = probe_group(os.path.join(t.path, "groups", name + ".group"))
                group = t._group(name, mode, window)
            except StorageError as e:
                if e.errno != errno.ENOENT:
                    raise
                continue                                  # deleted meanwhile
            for p in range(t.partitions):
                committed = group.partition_info(p)["committed"]
                c = floors[p] if committed is None else max(committed, floors[p])
                low = slowest[p]
                slowest[p] = c if low is None else min(low, c)
        self._floors = [s if s is not None else f for s, f in zip(slowest, floors)]
        return self._floors

    def depth(self, refresh: bool = True) -> int:
        floors = self._refresh_floors() if refresh or self._floors is None else self._floors
        return sum(log.bounds()[1] - f for log, f in zip(self.topic._logs, floors))

    def wait_for_room(self, timeout: Optional[float]) -> None:
        if self.depth(refresh=False) < self.max_depth or self.depth() < self.max_depth:
            return
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        notify = self.topic.notify
        while True:
            seq = notify.arm()
            try:
                depth = self.depth()
            except BaseException:
                notify.disarm()
                raise
            if depth < self.max_depth:
                notify.disarm()
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                notify.disarm()
                raise QueueFull(f"topic {self.topic.name!r} holds {depth} unfinished messages, "
                                f"max_depth={self.max_depth}; waited {timeout}s")
            notify.sleep(seq, _RECHECK if left is None else min(left, _RECHECK))
