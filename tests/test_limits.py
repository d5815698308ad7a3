"""Resource limits: a child process with a low RLIMIT_FSIZE (the largest
file it may write) meets it when a segment is preallocated.  It must get a
pyqueue.StorageError (an OSError with errno EFBIG) whose message names the
segment file, leave nothing half-made behind, keep every acknowledged
message, and carry on once the limit is lifted.

Only the soft limit is lowered, so that the child can raise it again.  Python
ignores SIGXFSZ, so the failing call returns EFBIG instead of killing it.
"""

from __future__ import annotations

import errno
import json
import os

import pyqueue

KiB = 1024

REPORT_ERROR = r'''
def report(e):
    print(json.dumps({"type": type(e).__name__, "storage": isinstance(e, pyqueue.StorageError),
                      "oserror": isinstance(e, OSError), "errno": getattr(e, "errno", None),
                      "message": str(e)}), flush=True)
'''

# argv: path
TOO_BIG_SEGMENT = r'''
import json, os, resource, sys
import pyqueue
''' + REPORT_ERROR + r'''
path = sys.argv[1]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
broker = pyqueue.open(path, fsync="never")
try:
    broker.topic("big", segment_bytes=1024 * 1024, max_message_bytes=4096)
except Exception as e:
    report(e)
else:
    print(json.dumps({"type": None}), flush=True)
pdir = os.path.join(path, "topics", "big", "0")
print(json.dumps(sorted(n for n in os.listdir(pdir) if n.endswith(".seg"))), flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
topic = broker.topic("big")
print(json.dumps(topic.send(b"after the limit was lifted").offset), flush=True)
broker.close()
'''


def check_storage_error(report: dict, segment_bytes: int) -> None:
    assert report["type"] is not None, "no error although the segment exceeds RLIMIT_FSIZE"
    assert report["storage"] and report["oserror"], f"expected StorageError, got {report['type']}: {report}"
    assert report["errno"] == errno.EFBIG, report
    msg = report["message"]
    assert ".seg" in msg and str(segment_bytes) in msg, f"the message should name the segment and its size: {msg}"


def test_segment_larger_than_the_file_size_limit(broker_path, children):
    """Creating a topic whose segment (1 MiB) exceeds RLIMIT_FSIZE (256 KiB)
    raises StorageError(EFBIG) naming the segment file, leaves no segment file
    behind, and the topic works once the limit is lifted."""
    child = children.run(TOO_BIG_SEGMENT, broker_path)
    assert child.returncode == 0, child.describe()
    report, leftovers, offset = (json.loads(x) for x in child.lines)
    check_storage_error(report, 1024 * KiB)
    assert leftovers == [], f"a failed preallocation left {leftovers}"
    assert offset == 0
    with pyqueue.open(broker_path) as broker:
        topic = broker.topic("big")
        assert topic.offsets(0) == (0, 1)
        assert topic.read(0, 0, 1)[0].value == b"after the limit was lifted"


# Fills two 128 KiB segments without a limit, then lowers RLIMIT_FSIZE to
# 64 KiB and sends on until the next roll fails; tries a batch at the limit;
# lifts the limit and sends again.  Prints {"acked": [[seq, offset], ...]}
# and the error reports.  argv: path
ROLL_PAST_LIMIT = r'''
import json, os, resource, sys
import pyqueue
''' + REPORT_ERROR + r'''
path = sys.argv[1]
broker = pyqueue.open(path, fsync="never")
topic = broker.topic("roll", segment_bytes=128 * 1024, max_message_bytes=4096)
acked = []
seq = 0

def value(s):
    return (b"m%06d|" % s) * (1 + s % 300)

def segments():
    return sorted(n for n in os.listdir(os.path.join(path, "topics", "roll", "0")) if n.endswith(".seg"))

while len(segments()) < 2:
    acked.append([seq, topic.send(value(seq), key=b"k%d" % (seq % 10)).offset])
    seq += 1
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
before = segments()
while True:
    try:
        acked.append([seq, topic.send(value(seq), key=b"k%d" % (seq % 10)).offset])
        seq += 1
    except Exception as e:
        report(e)
        break
end = topic.offsets(0)[1]
try:
    topic.send_batch([value(s) for s in range(seq, seq + 50)], key=b"batch")
except Exception as e:
    report(e)
else:
    print(json.dumps({"type": None}), flush=True)
print(json.dumps({"end_before": end, "end_after": topic.offsets(0)[1],
                  "segments_before": before, "segments_after": segments()}), flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
for _ in range(500):
    acked.append([seq, topic.send(value(seq), key=b"k%d" % (seq % 10)).offset])
    seq += 1
broker.close()
print(json.dumps({"acked": acked}), flush=True)
'''


def test_roll_past_the_file_size_limit(broker_path, children):
    """A producer whose next segment cannot be preallocated (RLIMIT_FSIZE
    lowered under the segment size) gets StorageError(EFBIG) from the send
    that needs the roll, and from a batch at that point; neither leaves a
    message nor a segment file behind.  Once the limit is lifted it goes on
    at the next offset, and a reopened log holds exactly the acknowledged
    messages, with dense offsets and their exact bytes."""
    child = children.run(ROLL_PAST_LIMIT, broker_path)
    assert child.returncode == 0, child.describe()
    single, batch, state, done = (json.loads(x) for x in child.lines)
    check_storage_error(single, 128 * KiB)
    check_storage_error(batch, 128 * KiB)
    assert state["end_after"] == state["end_before"], "the failed batch left messages visible"
    assert state["segments_after"] == state["segments_before"], "a failed roll left a segment file"
    acked = done["acked"]
    assert [off for _, off in acked] == list(range(len(acked))), "offsets of acked messages are not dense"
    assert acked[-501][1] == state["end_before"] - 1

    with pyqueue.open(broker_path) as broker:
        topic = broker.topic("roll")
        assert topic.offsets(0) == (0, len(acked))
        got = []
        while len(got) < len(acked):
            got += topic.read(0, len(got), 1000)
        for (seq, off), msg in zip(acked, got):
            assert msg.offset == off
            assert msg.value == (b"m%06d|" % seq) * (1 + seq % 300), f"offset {off} altered"
            assert msg.key == b"k%d" % (seq % 10)
        assert len(os.listdir(os.path.join(broker_path, "topics", "roll", "0"))) >= 4


# A batch of equal rows that needs a roll the file-size limit forbids: its
# rows copied into the tail before the roll stay there, unpublished.  Then,
# with the limit lifted, a short batch of rows of the same size is appended
# over them.  argv: path
FAILED_ROLL_LEFTOVERS = r'''
import json, resource, sys
import pyqueue
''' + REPORT_ERROR + r'''
path = sys.argv[1]
broker = pyqueue.open(path, fsync="never")
topic = broker.topic("rows", segment_bytes=64 * 1024, max_message_bytes=1024)
row = lambda tag, i: (b"%s-%05d|" % (tag, i)) * 20
for i in range(100):
    topic.send(row(b"first", i))
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, hard))
try:
    topic.send_batch([row(b"failed", i) for i in range(100, 400)])
except Exception as e:
    report(e)
else:
    print(json.dumps({"type": None}), flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print(json.dumps(list(topic.send_batch([row(b"second", i) for i in range(100, 105)]).offsets)), flush=True)
broker.close()
'''


def test_failed_roll_leaves_no_records_behind(broker_path, children, drop_state):
    """A batch that fails at its roll (the next segment is over the file-size
    limit) is invisible, although its first rows were already copied into
    the tail segment.  They must stay invisible for good: after a later
    append of the same size lands on top of the first of them, neither a
    reopen nor a reboot (state dropped, tail scanned) may bring the rest back."""
    child = children.run(FAILED_ROLL_LEFTOVERS, broker_path)
    assert child.returncode == 0, child.describe()
    report, offsets = (json.loads(x) for x in child.lines)
    check_storage_error(report, 64 * KiB)
    assert offsets == list(range(100, 105))
    expected = [(b"first-%05d|" % i) * 20 for i in range(100)]
    expected += [(b"second-%05d|" % i) * 20 for i in range(100, 105)]
    for reboot in (False, True):
        if reboot:
            drop_state(broker_path)
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("rows")
            start, end = topic.offsets(0)
            values = [m.value for m in topic.read(0, 0, 1000)]
            assert (start, end) == (0, 105), (
                f"{'after a reboot ' if reboot else ''}the log ends at {end}, not 105: it shows "
                f"{values[105][:12] if len(values) > 105 else b''!r}... from the failed batch")
            assert values == expected
