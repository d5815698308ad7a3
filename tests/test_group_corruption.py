"""Damaged consumer-group, dedup and notify files, opened and used.

The rule under test (DESIGN.md §2): no file on disk, however damaged, may
crash the interpreter; what a user can cause raises a pyqueue.PyQueueError.
Here the files are a topic's group files (`groups/<g>.group`, queue and stream
mode), its dedup table (`dedup`) and its wake-up word (`notify`), left behind
by a member SIGKILLed mid-work (member slots, leases, a delayed message and a
stream owner are all in them), then damaged with seeded garbage, truncation
or growth.  A child opens each damaged copy and uses it the way applications
do: a queue consumer polls, acks, nacks and extends; a stream consumer polls,
acks and commits; sends with dedup ids (known and new); stats.  It must not
die of a signal, hang, or raise anything but a PyQueueError, and a receipt it
gets must name a record the topic has.

Group files and dedup tables are authoritative (committed offsets, in-flight
deliveries and sent ids exist nowhere else): one whose size is wrong must be
refused with a CorruptionError, never silently replaced by an empty one.

Layouts: docs/FORMAT.md ("Consumer group", "Topic notify"); the dedup table is
a 128-byte header (the lock at 64) followed by its entries (native/dedup.c).
"""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest
from conftest import Children

SEGMENT = 64 * 1024
WINDOW = 16                 # max_in_flight of the queue group "q"
PARTITIONS = 2
DEDUP_CAPACITY = 64
GROUP_HEADER = 8192
CASE_TIMEOUT = 5.0          # seconds; a sound case takes a fraction of one

# Builds the template and stays mid-work until it is SIGKILLed.  argv: broker.
BUILDER = r'''
import json, os, sys, pyqueue
b = pyqueue.open(sys.argv[1], fsync="never")
t = b.topic("t", partitions=%(parts)d, segment_bytes=%(segment)d, dedup_capacity=%(dedup)d)
for i in range(60):
    t.send(b"m%%d" %% i, key=b"k%%d" %% (i %% 7))
q = t.consumer("q", mode="queue", max_in_flight=%(window)d, visibility_timeout=600)
msgs = q.poll_batch(12, timeout=1)
for m in msgs[:5]:
    m.ack()
msgs[5].nack(delay=600)                       # a delayed entry
acked = [[m.partition, m.offset] for m in msgs[:5]]
s = t.consumer("s", auto_commit_interval=0)
for m in s.poll_batch(20, timeout=1):
    m.ack()
s.commit()
s.poll_batch(5, timeout=1)                    # delivered past the commit, then the kill
receipts = [t.send(b"d%%d" %% i, dedup_id="id-%%d" %% i) for i in range(10)]
os.write(1, ("ready %%s\n" %% json.dumps({"acked": acked, "id-3": [receipts[3].partition, receipts[3].offset]})).encode())
sys.stdin.readline()
''' % {"parts": PARTITIONS, "segment": SEGMENT, "dedup": DEDUP_CAPACITY, "window": WINDOW}

# Per case: "case <i>", then "ok", "error <classes>" (PyQueueErrors, one per
# failed step), "WRONG <i> <what>" or "BAD <i> <traceback>" (not a
# PyQueueError).  argv: JSON [[case, dir], ...].
USER = r'''
import json, os, sys, traceback
import pyqueue

def emit(text):
    os.write(1, (text + "\n").encode())

def use_queue(t, wrong):
    c = t.consumer("q", mode="queue", max_in_flight=%(window)d, visibility_timeout=30)
    try:
        msgs = c.poll_batch(20, timeout=0)
        for i, m in enumerate(msgs):
            if i %% 4 == 0:
                m.nack()
            elif i %% 4 == 1:
                m.nack(delay=0.01)
            elif i %% 4 == 2:
                m.extend(5)
                m.ack()
            else:
                m.ack()
        c.poll_batch(5, timeout=0.05)         # sleeps on the notify word
        c.lag()
        c.in_flight()
        c.members()
    finally:
        c.close()

def use_stream(t, wrong):
    c = t.consumer("s", auto_commit_interval=0)
    try:
        for m in c.poll_batch(30, timeout=0.05):
            m.ack()
        c.commit()
        c.lag()
        c.assignment()
    finally:
        c.close()

def use_dedup(t, wrong):
    receipts = [t.send(b"again", dedup_id="id-3"), t.send(b"new", dedup_id="new-id"),
                t.send(b"new", dedup_id="new-id"), t.send(b"plain")]
    for r in receipts:
        if not 0 <= r.partition < t.partitions or r.offset >= t.offsets(r.partition)[1]:
            wrong.append("receipt %%r names no record of the topic" %% (r,))

def use_stats(b, wrong):
    b.stats()

def check_case(path):
    errors, wrong = [], []
    with pyqueue.open(path, fsync="never") as b:
        t = b.topic("t")
        for step in (use_queue, use_stream, use_dedup):
            try:
                step(t, wrong)
            except pyqueue.PyQueueError as e:
                errors.append("%%s:%%s" %% (step.__name__, type(e).__name__))
        try:
            use_stats(b, wrong)
        except pyqueue.PyQueueError as e:
            errors.append("stats:%%s" %% type(e).__name__)
    return errors, wrong

for case, path in json.loads(sys.argv[1]):
    emit("case %%d" %% case)
    try:
        errors, wrong = check_case(path)
    except pyqueue.PyQueueError as e:
        emit("error open:%%s" %% type(e).__name__)
        continue
    except BaseException:
        emit("BAD %%d %%s" %% (case, traceback.format_exc().replace("\n", " | ")))
        continue
    if wrong:
        emit("WRONG %%d %%s" %% (case, "; ".join(wrong[:3])))
    else:
        emit("error " + ",".join(errors) if errors else "ok")
''' % {"window": WINDOW}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[str, dict]:
    """A broker whose group, dedup and notify files were left by a process
    SIGKILLed mid-work; what it acked in queue group "q" and the receipt
    (partition, offset) of its send with dedup id "id-3".  Never opened
    here: a sole opener would tidy it up."""
    root = str(tmp_path_factory.mktemp("group-template") / "broker")
    kids = Children()
    try:
        builder = kids.spawn(BUILDER, root)
        word, _, facts = builder.line().partition(" ")
        assert word == "ready", builder.describe()
        builder.kill()
    finally:
        kids.reap()
    for name in TARGETS.values():
        assert os.path.exists(os.path.join(root, "topics", "t", name)), name
    facts = json.loads(facts)
    return root, {"acked": {tuple(x) for x in facts["acked"]}, "id-3": tuple(facts["id-3"])}


@pytest.fixture
def template(built) -> str:
    return built[0]


TARGETS = {"queue-group": "groups/q.group", "stream-group": "groups/s.group",
           "dedup": "dedup", "notify": "notify"}


def regions(kind: str, size: int) -> list[tuple[int, int]]:
    """Byte ranges worth hitting in each kind of file: its fields, its lock,
    its tables (from the layouts in docs/FORMAT.md and native/dedup.c)."""
    if kind in ("queue-group", "stream-group"):
        window = WINDOW if kind == "queue-group" else 0
        stride = 128 + 32 * window
        out = [(0, 48), (128, 192), (192, 192 + 64 * 4)]              # header fields, member lock, slots
        for p in range(PARTITIONS):
            base = GROUP_HEADER + p * stride
            out += [(base, base + 64), (base + 64, base + 128)]       # partition lock, fields
            if window:
                out.append((base + 128, base + stride))               # in-flight entries
        return [(a, min(b, size)) for a, b in out if a < size]
    if kind == "dedup":
        return [(0, 16), (16, 64), (64, 128), (128, size)]        # header, reserved, lock, entries
    return [(0, 8), (8, size)]


def damage(rng: random.Random, path: str, kind: str) -> str:
    """Damage one file; returns a description."""
    size = os.path.getsize(path)
    name = os.path.basename(path)
    how = rng.choice(["garbage"] * 6 + ["truncate", "resize"])
    if how == "truncate":
        new = rng.choice([0, rng.randrange(0, size), max(0, size - rng.randrange(1, 9)), 64, 4096])
        os.truncate(path, min(new, size - 1))
        return f"truncate {name} to {min(new, size - 1)}"
    if how == "resize":
        new = rng.choice([size + rng.randrange(1, 9), size * 2, size + 4096])
        os.truncate(path, new)
        return f"resize {name} to {new}"
    spots = []
    with open(path, "r+b") as f:
        for _ in range(rng.randrange(1, 4)):
            lo, hi = rng.choice(regions(kind, size) + [(0, size)])
            pos = rng.randrange(lo, hi)
            n = rng.choice([1, 1, 2, 4, 8, 8, rng.randrange(1, 64)])
            junk = rng.choice([bytes(rng.randrange(256) for _ in range(n)), b"\0" * n, b"\xff" * n,
                               rng.randrange(1 << 64).to_bytes(8, "little")[:n]])
            f.seek(pos)
            f.write(junk[: max(0, size - pos)])
            spots.append(f"{len(junk[: max(0, size - pos)])}@{pos}")
    return f"garbage {name} {' '.join(spots)}"


FUZZ_CASES = {"queue-group": 400, "stream-group": 200, "dedup": 250, "notify": 120, "mixed": 250}


@pytest.mark.parametrize("kind", list(FUZZ_CASES))
def test_damaged_group_dedup_notify_files_raise_only_pyqueue_errors(template, tmp_path, children, kind):
    """Seeded garbage, truncation and growth of one kind of file (or of
    several, "mixed"), then a child uses the broker: no signal, no hang, no
    exception but a PyQueueError, no receipt naming a partition the topic
    does not have."""
    rng = random.Random(f"group-fuzz-{kind}")
    cases, notes = [], {}
    for i in range(FUZZ_CASES[kind]):
        root = str(tmp_path / f"case{i}")
        shutil.copytree(template, root)
        picks = rng.sample(list(TARGETS), rng.randrange(2, 4)) if kind == "mixed" else [kind]
        notes[i] = "; ".join(damage(rng, os.path.join(root, "topics", "t", TARGETS[k]), k) for k in picks)
        cases.append([i, root])

    failures: list[str] = []
    outcomes: dict[str, int] = {}
    todo = cases
    while todo:
        child = children.spawn(USER, json.dumps(todo))
        current = None
        finished = False
        while True:
            try:
                line = child.line(timeout=CASE_TIMEOUT)
            except AssertionError:
                if child.proc.poll() is None:       # no line within the timeout: hung
                    child.proc.kill()
                    child.wait()
                    failures.append(f"case {current} [{notes.get(current)}]: HANG (no answer in "
                                    f"{CASE_TIMEOUT} s)")
                else:
                    child.wait()
                    finished = child.returncode == 0
                    if not finished:
                        failures.append(f"case {current} [{notes.get(current)}]: {child.describe()}")
                break
            word, _, rest = line.partition(" ")
            if word == "case":
                current = int(rest)
            elif word in ("ok", "error"):
                outcomes[word] = outcomes.get(word, 0) + 1
            else:
                failures.append(f"case {current} [{notes[current]}]: {line}")
        if finished or current is None:
            break
        done = [c for c, _ in todo].index(current) + 1
        todo = todo[done:]
        if sum("HANG" in f for f in failures) >= 3:
            failures.append(f"stopped after 3 hangs; {len(todo)} cases not run")
            break
    assert not failures, f"{len(failures)} bad outcome(s) of {len(cases)}:\n" + "\n".join(failures[:10])
    assert sum(outcomes.values()) == len(cases), outcomes


# A group file and a dedup table are authoritative (the only record of the
# group's positions, of the ids sent): one of the wrong size must be refused,
# never silently replaced by an empty one.  argv: broker, what to do.
AFTER_RESIZE = r'''
import json, os, sys, pyqueue
path, what = sys.argv[1], sys.argv[2]
try:
    with pyqueue.open(path, fsync="never") as b:
        t = b.topic("t")
        if what == "group":
            c = t.consumer("q", mode="queue", max_in_flight=%(window)d, visibility_timeout=30)
            got = sorted([m.partition, m.offset] for m in c.poll_batch(100, timeout=0.2))
            os.write(1, ("delivered %%s\n" %% json.dumps(got)).encode())
        else:
            r = t.send(b"again", dedup_id="id-3")
            os.write(1, ("receipt %%d %%d\n" %% (r.partition, r.offset)).encode())
except pyqueue.CorruptionError as e:
    os.write(1, ("refused %%s\n" %% e).encode())
''' % {"window": WINDOW}


@pytest.mark.parametrize("change", ["truncate", "grow"])
@pytest.mark.parametrize("target", ["group", "dedup"])
def test_authoritative_file_of_the_wrong_size_is_refused_not_reset(built, tmp_path, children, target, change):
    """The queue group's file (5 messages acked) or the dedup table (id-3
    sent once) cut short by 8 bytes or grown by a page: opening it raises
    CorruptionError naming the file.  It must not be reset to empty, which
    delivers the acked messages again or lets id-3 be written a second time."""
    template, facts = built
    acked, first = facts["acked"], facts["id-3"]
    root = str(tmp_path / "broker")
    shutil.copytree(template, root)
    path = os.path.join(root, "topics", "t", "groups", "q.group") if target == "group" \
        else os.path.join(root, "topics", "t", "dedup")
    size = os.path.getsize(path)
    os.truncate(path, size - 8 if change == "truncate" else size + 4096)
    done = "cut short" if change == "truncate" else "grown"
    child = children.run(AFTER_RESIZE, root, target)
    assert child.returncode == 0 and child.lines, child.describe()
    word, _, rest = child.lines[-1].partition(" ")
    if word == "refused":
        assert os.path.basename(path) in rest, rest
    elif target == "group":
        again = {tuple(x) for x in json.loads(rest)} & acked
        assert not again, (f"q.group {done}: silently reset to empty; the acked messages "
                           f"{sorted(again)} were delivered again")
    else:
        assert rest == "%d %d" % first, (
            f"dedup table {done}: silently reset to empty; id-3 was written again at {rest} "
            f"(first receipt {first})")
