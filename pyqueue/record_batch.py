"""RecordBatch: many records read at once, without copying their bytes."""

from __future__ import annotations

from typing import Any, Iterator


class RecordBatch:
    """Values of consecutive records as one read-only buffer plus numpy arrays.

    `buffer` is a memoryview of the mapped log; value i is
    buffer[positions[i]:positions[i] + lengths[i]].  The buffer keeps the
    mapping alive, so it stays valid after the topic is closed.
    """

    __slots__ = ("topic", "partition", "buffer", "offsets", "positions", "lengths", "timestamps_ns")

    def __init__(self, topic: str, partition: int, raw: tuple) -> None:
        try:
            import numpy as np
        except ModuleNotFoundError as e:  # pragma: no cover - numpy is in the test extras
            raise ModuleNotFoundError("read_batch returns numpy arrays: pip install 'pyqueue[numpy]'") from e
        buffer, offsets, positions, lengths, timestamps = raw
        self.topic = topic
        self.partition = partition
        self.buffer: memoryview = buffer
        self.offsets: Any = np.frombuffer(offsets, dtype=np.uint64)
        self.positions: Any = np.frombuffer(positions, dtype=np.uint32)
        self.lengths: Any = np.frombuffer(lengths, dtype=np.uint32)
        self.timestamps_ns: Any = np.frombuffer(timestamps, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def value(self, i: int) -> memoryview:
        """Value i as a zero-copy view."""
        p = int(self.positions[i])
        return self.buffer[p:p + int(self.lengths[i])]

    def __iter__(self) -> Iterator[memoryview]:
        for i in range(len(self)):
            yield self.value(i)

    @property
    def next_offset(self) -> int:
        """The offset to read from next."""
        return int(self.offsets[-1]) + 1 if len(self) else -1

    def __repr__(self) -> str:
        if not len(self):
            return f"RecordBatch({self.topic!r}, {self.partition}, empty)"
        return (f"RecordBatch({self.topic!r}, {self.partition}, offsets "
                f"{int(self.offsets[0])}..{int(self.offsets[-1])}, {len(self.buffer)} bytes)")
