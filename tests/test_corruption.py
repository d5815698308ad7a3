"""Corruption tests: real files damaged on disk, then opened and read.

The rule under test (DESIGN.md §2, §3): no file, however damaged, may crash
the interpreter; damage is reported as a pyqueue.PyQueueError (a
CorruptionError naming the file and byte position where a record fails its
CRC), or cut off at the tail by recovery; and a read never returns bytes that
differ from the ones written.

Byte positions come from the file format: a 64-byte segment header, 8-aligned
frames with a 48-byte header (u32 length, u32 CRC32C over bytes [8, length),
u64 offset, i64 timestamp, i64 deliver_at, u32 key_len, u32 headers_len,
u32 value_len, u32 attributes; then key, headers, value), and an index of u32
frame positions growing backward from the end of the file.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct

import pytest

import pyqueue

SEGMENT = 64 * 1024
FRAME_HEADER = 48
SEGMENT_HEADER = 64
KiB = 1024

# Payloads shared with the children: every record's key, headers and value
# are a function of (topic, partition, offset), so a reader can tell whether
# it got exactly what was written there.
PAYLOAD_SRC = r'''
import hashlib

def value_of(topic, partition, offset):
    h = hashlib.blake2b(b"%s/%d/%d" % (topic.encode(), partition, offset), digest_size=16).digest()
    n = 8 + int.from_bytes(h[:2], "little") % (1500 if h[2] % 8 else 6000)
    head = b"%s/%d/%d/" % (topic.encode(), partition, offset)
    return (head + h * (n // 16 + 1))[:max(n, len(head))]

def key_of(topic, partition, offset):
    return None if offset % 7 == 3 else b"key-%d" % (offset % 50)

def headers_of(topic, partition, offset):
    return {"n": b"%d" % offset} if offset % 3 == 0 else {}
'''
exec(PAYLOAD_SRC)


def fill(topic: pyqueue.Topic, partition: int, start: int, count: int) -> None:
    for off in range(start, start + count):
        r = topic.send(value_of(topic.name, partition, off), key=key_of(topic.name, partition, off),
                       headers=headers_of(topic.name, partition, off) or None, partition=partition)
        assert r.offset == off


def assert_intact(msg: pyqueue.Message, topic: str, partition: int) -> None:
    off = msg.offset
    assert msg.value == value_of(topic, partition, off), f"{topic}[{partition}] offset {off}: wrong bytes"
    assert msg.key == key_of(topic, partition, off), f"{topic}[{partition}] offset {off}: wrong key"
    assert msg.headers == headers_of(topic, partition, off), f"{topic}[{partition}] offset {off}: wrong headers"


def partition_dir(root: str, topic: str, partition: int = 0) -> str:
    return os.path.join(root, "topics", topic, str(partition))


def segment_files(root: str, topic: str, partition: int = 0) -> list[str]:
    d = partition_dir(root, topic, partition)
    return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".seg")]


def index_entry(path: str, base: int, offset: int) -> tuple[int, int]:
    """(file position of the index entry of `offset`, the frame position it holds)."""
    size = os.path.getsize(path)
    at = size - 4 * (offset - base + 1)
    with open(path, "rb") as f:
        f.seek(at)
        return at, struct.unpack("<I", f.read(4))[0]


def frame_at(path: str, pos: int) -> dict[str, int]:
    with open(path, "rb") as f:
        f.seek(pos)
        raw = f.read(FRAME_HEADER)
    length, crc, offset, ts, deliver, klen, hlen, vlen, attrs = struct.unpack("<IIQqqIIII", raw)
    klen_eff = 0 if klen == 0xFFFFFFFF else klen
    return {"pos": pos, "length": length, "offset": offset, "key": pos + FRAME_HEADER,
            "value": pos + FRAME_HEADER + klen_eff + hlen, "value_len": vlen}


def walk_frames(path: str) -> list[dict[str, int]]:
    """The frames of a healthy segment, in file order (for choosing targets)."""
    size = os.path.getsize(path)
    out = []
    pos = SEGMENT_HEADER
    while pos + FRAME_HEADER <= size:
        f = frame_at(path, pos)
        if f["length"] < FRAME_HEADER or pos + f["length"] > size or (out and f["offset"] != out[-1]["offset"] + 1):
            break
        out.append(f)
        pos += (f["length"] + 7) & ~7
    return out


def base_of(path: str) -> int:
    return int(os.path.basename(path)[:20])


def garble(path: str, pos: int, n: int = 1) -> None:
    """Flip every bit of n bytes at pos (never a no-op)."""
    with open(path, "r+b") as f:
        f.seek(pos)
        old = f.read(n)
        f.seek(pos)
        f.write(bytes(b ^ 0xFF for b in old))


def read_everything(topic: pyqueue.Topic, partition: int = 0) -> list[pyqueue.Message]:
    start, end = topic.offsets(partition)
    out: list[pyqueue.Message] = []
    off = start
    while off < end:
        got = topic.read(partition, off, 500)
        assert got, f"no record at {off} below the end {end}"
        out.extend(got)
        off += len(got)
    return out


# ---------------------------------------------------------------- (a) torn tail

TAIL_SPOTS = ["length", "crc", "offset", "key", "value", "last-byte"]


@pytest.mark.parametrize("reboot", [False, True], ids=["same-boot", "reboot"])
@pytest.mark.parametrize("spot", TAIL_SPOTS)
def test_torn_last_record_is_cut_or_reported(broker_path, drop_state, spot, reboot):
    """Garble the last record of the tail segment after a clean close; on
    reopen that record is either cut (the log ends before it) or reading it
    raises CorruptionError; every other record reads back exactly; the log
    takes new appends where it ends, and they survive another reopen."""
    n = 250
    with pyqueue.open(broker_path, fsync="never") as broker:
        topic = broker.topic("t", segment_bytes=SEGMENT, max_message_bytes=8 * KiB)
        fill(topic, 0, 0, n)
    tail = segment_files(broker_path, "t")[-1]
    _, pos = index_entry(tail, base_of(tail), n - 1)
    frame = frame_at(tail, pos)
    assert frame["offset"] == n - 1
    at = {"length": pos, "crc": pos + 4, "offset": pos + 8, "key": frame["key"],
          "value": frame["value"] + frame["value_len"] // 2,
          "last-byte": pos + frame["length"] - 1}[spot]
    garble(tail, at)
    if reboot:
        drop_state(broker_path)

    with pyqueue.open(broker_path, fsync="never") as broker:
        topic = broker.topic("t")
        start, end = topic.offsets(0)
        assert start == 0 and end in (n - 1, n), f"log ends at {end} after damage to record {n - 1}"
        for msg in topic.read(0, 0, n - 1):
            assert_intact(msg, "t", 0)
        if end == n:
            with pytest.raises(pyqueue.CorruptionError) as err:
                topic.read(0, n - 1, 1)
            assert tail in str(err.value)
            appended_at = n
        else:
            assert topic.read(0, end, 1) == []
            appended_at = n - 1
        fill(topic, 0, appended_at, 5)
        assert [m.offset for m in topic.read(0, appended_at, 10)] == list(range(appended_at, appended_at + 5))

    for again in (False, True):
        if again:
            drop_state(broker_path)
        with pyqueue.open(broker_path, fsync="never") as broker:
            topic = broker.topic("t")
            assert topic.offsets(0) == (0, appended_at + 5)
            for msg in topic.read(0, appended_at, 10):
                assert_intact(msg, "t", 0)


def test_cut_records_never_come_back(broker_path, drop_state):
    """Recovery after a reboot cuts the tail at the first frame that fails
    validation, dropping the (intact) frames behind it.  Those frames must
    stay dropped: after an append of the same size lands in the damaged
    frame's place, a second reboot must not revive them behind it.  (The
    revived frames would pass their CRC and carry the very offsets the scan
    expects: only the scan's own rules can tell them from new records.)"""
    with pyqueue.open(broker_path, fsync="never") as broker:
        topic = broker.topic("t", segment_bytes=SEGMENT, max_message_bytes=8 * KiB)
        for off in range(100):
            topic.send(b"old-%05d" % off + b"." * 100)
    tail = segment_files(broker_path, "t")[-1]
    assert base_of(tail) == 0
    _, pos = index_entry(tail, 0, 50)
    garble(tail, frame_at(tail, pos)["value"])
    drop_state(broker_path)

    with pyqueue.open(broker_path, fsync="never") as broker:
        topic = broker.topic("t")
        assert topic.offsets(0) == (0, 50), "the scan keeps a record that fails its CRC"
        assert topic.send(b"new-%05d" % 50 + b"." * 100).offset == 50
    drop_state(broker_path)

    with pyqueue.open(broker_path, fsync="never") as broker:
        topic = broker.topic("t")
        msgs = read_everything(topic)
        assert [m.value[:9] for m in msgs[48:]] == [b"old-00048", b"old-00049", b"new-00050"], (
            f"the log ends at {topic.offsets(0)[1]}: records cut by the first recovery came back "
            f"after the new record 50 ({msgs[51].value[:9] if len(msgs) > 51 else ''!r}, ...)")


# ----------------------------------------------------------- (b) sealed segment

SEALED_SPOTS = ["value", "key", "length", "crc", "offset", "index-entry"]


@pytest.mark.parametrize("live", [False, True], ids=["reopened", "while-open"])
@pytest.mark.parametrize("spot", SEALED_SPOTS)
def test_damaged_sealed_segment_names_file_and_position(broker_path, drop_state, spot, live):
    """A byte damaged in the middle of a sealed segment: reading that offset
    raises CorruptionError naming the segment file and the frame's byte
    position; every other offset, before and after, in that segment and the
    others, still reads back exactly."""
    n = 600
    broker = pyqueue.open(broker_path, fsync="never")
    try:
        topic = broker.topic("t", segment_bytes=SEGMENT, max_message_bytes=8 * KiB)
        fill(topic, 0, 0, n)
        segs = segment_files(broker_path, "t")
        assert len(segs) >= 4, "segments should have rolled"
        victim = segs[1]
        base, next_base = base_of(victim), base_of(segs[2])
        # The frame covering the middle byte of the file.
        frames = walk_frames(victim)
        assert frames[-1]["offset"] == next_base - 1
        mid = SEGMENT // 2
        frame = next(f for f in frames if f["pos"] <= mid < f["pos"] + f["length"])
        bad = frame["offset"]
        while key_of("t", 0, bad) is None and spot == "key":
            frame = frames[frames.index(frame) + 1]
            bad = frame["offset"]
        pos = frame["pos"]
        positions = {pos}
        if spot == "index-entry":
            at, _ = index_entry(victim, base, bad)
            neighbour = frames[frames.index(frame) + 1]["pos"]
            with open(victim, "r+b") as f:
                f.seek(at)
                f.write(struct.pack("<I", neighbour))
            positions.add(neighbour)
        else:
            at = {"value": frame["value"] + frame["value_len"] // 2, "key": frame["key"],
                  "length": pos, "crc": pos + 4, "offset": pos + 8}[spot]
            garble(victim, at)
        if not live:
            broker.close()
            drop_state(broker_path)           # sealed segments are not rescanned: same result
            broker = pyqueue.open(broker_path, fsync="never")
            topic = broker.topic("t")

        assert topic.offsets(0) == (0, n)
        with pytest.raises(pyqueue.CorruptionError) as err:
            topic.read(0, bad, 1)
        msg = str(err.value)
        assert victim in msg, f"the message does not name the file: {msg}"
        named = {int(x) for x in re.findall(r"byte (\d+)", msg)}
        assert named & positions, f"the message does not name byte position {sorted(positions)}: {msg}"

        for off in range(n):
            if off == bad:
                continue
            got = topic.read(0, off, 1)
            assert len(got) == 1 and got[0].offset == off
            assert_intact(got[0], "t", 0)
        # The damage is still reported, not cleaned up, after more appends.
        fill(topic, 0, n, 10)
        with pytest.raises(pyqueue.CorruptionError):
            topic.read(0, bad, 1)
    finally:
        broker.close()


def test_read_running_into_damage_returns_the_records_before_it(broker_path):
    """A read of many records that meets a damaged one in a sealed segment
    returns the intact records before it (as Topic.read promises: the next
    read raises), rather than failing for all of them: otherwise a reader
    cannot get past the good records of that segment except one at a time."""
    with pyqueue.open(broker_path, fsync="never") as broker:
        topic = broker.topic("t", segment_bytes=SEGMENT, max_message_bytes=8 * KiB)
        fill(topic, 0, 0, 400)
        victim = segment_files(broker_path, "t")[1]
        frames = walk_frames(victim)
        frame = frames[len(frames) // 2]
        garble(victim, frame["value"])
        base, bad = base_of(victim), frame["offset"]
        got = []
        with pytest.raises(pyqueue.CorruptionError):
            while True:                     # as a consumer would: until it hits the damage
                batch = topic.read(0, base + len(got), 1000)
                assert batch, "read returned nothing before reaching the damage"
                got += batch
        assert [m.offset for m in got] == list(range(base, bad))
        for m in got:
            assert_intact(m, "t", 0)


# ------------------------------------------------------ (c) random damage, fuzz

# One child runs many cases: for each broker directory it opens the broker,
# reads every record of every partition (skipping one offset past each
# CorruptionError), checks each record against the payload functions,
# appends one record per partition and reads it back.  Per case it prints
# "case <i>", then "ok", "error <class>" (a PyQueueError) or "WRONG <what>".
# Any other exception is printed with its traceback as "BAD <i> ..." and the
# child goes on; a signal kills it, and the parent knows the case from the
# last "case" line.  argv: JSON [[case, dir], ...] and {topic: [counts]}
READER = PAYLOAD_SRC + r'''
import json, os, sys, traceback
import pyqueue

def emit(text):
    os.write(1, (text + "\n").encode())

def check_case(path, written):
    wrong = []
    with pyqueue.open(path, fsync="never") as broker:
        for name in broker.topics():
            topic = broker.topic(name)
            for p in range(topic.partitions):
                start, end = topic.offsets(p)
                counts = written.get(name, [])
                have = counts[p] if p < len(counts) else 0
                if end > have:
                    wrong.append("%s[%d] ends at %d, only %d were written" % (name, p, end, have))
                    end = have
                off = start
                while off < end:
                    try:
                        msgs = topic.read(p, off, 300)
                    except pyqueue.CorruptionError:
                        off += 1
                        continue
                    if not msgs:
                        wrong.append("%s[%d]: empty read at %d below %d" % (name, p, off, end))
                        break
                    for m in msgs:
                        if m.offset != off:
                            wrong.append("%s[%d]: offset %d read at %d" % (name, p, m.offset, off))
                        elif (m.value != value_of(name, p, off) or m.key != key_of(name, p, off)
                              or m.headers != headers_of(name, p, off)):
                            wrong.append("%s[%d] offset %d: bytes differ from those written" % (name, p, off))
                        off += 1
                    if off > end:
                        wrong.append("%s[%d]: read past the end %d" % (name, p, end))
                # The partition must also take an append and give it back.
                r = topic.send(b"after-damage", partition=p)
                got = topic.read(p, r.offset, 1)
                if len(got) != 1 or got[0].value != b"after-damage":
                    wrong.append("%s[%d]: append at %d reads back %r" % (name, p, r.offset, got))
    return wrong

cases = json.loads(sys.argv[1])
written = json.loads(sys.argv[2])
for case, path in cases:
    emit("case %d" % case)
    try:
        wrong = check_case(path, written)
    except pyqueue.PyQueueError as e:
        emit("error %s" % type(e).__name__)
        continue
    except BaseException:
        emit("BAD %d %s" % (case, traceback.format_exc().replace("\n", " | ")))
        continue
    emit("WRONG %d %s" % (case, "; ".join(wrong[:3])) if wrong else "ok")
'''

TEMPLATE_TOPICS = {"a": (1, 520), "b": (2, 160)}   # name: (partitions, records per partition)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    """A healthy broker: topic "a" spans several 64 KiB segments, topic "b"
    has two partitions; every record follows the payload functions."""
    root = str(tmp_path_factory.mktemp("template") / "broker")
    with pyqueue.open(root, fsync="never") as broker:
        for name, (parts, count) in TEMPLATE_TOPICS.items():
            topic = broker.topic(name, partitions=parts, segment_bytes=SEGMENT, max_message_bytes=8 * KiB)
            for p in range(parts):
                fill(topic, p, 0, count)
    assert len(segment_files(root, "a")) >= 4
    return root


def files_of(root: str) -> dict[str, list[str]]:
    """The broker's files by kind; "other" is any file not named here (such
    as a topic's shared wake-up file), so new kinds get damaged too."""
    kinds: dict[str, list[str]] = {"sealed": [], "tail": [], "state": [], "topic.json": [],
                                   "broker.json": [], "other": []}
    tails = {segment_files(root, name, p)[-1]
             for name, (parts, _) in TEMPLATE_TOPICS.items() for p in range(parts)}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if name.endswith(".seg"):
                kinds["tail" if path in tails else "sealed"].append(path)
            elif name in ("state", "topic.json", "broker.json"):
                kinds[name].append(path)
            else:
                kinds["other"].append(path)
    return kinds


def damage(rng: random.Random, path: str, kind: str) -> str:
    """Damage one file; returns a description."""
    size = os.path.getsize(path)
    name = os.path.basename(path)
    how = rng.choice(["garbage"] * 4 + ["truncate", "resize"] + (["digit"] * 2 if name.endswith(".json") else []))
    if how == "truncate" or size == 0:
        new = rng.choice([0, rng.randrange(0, max(1, size)), max(0, size - rng.randrange(1, 9)),
                          min(size, 64)])
        os.truncate(path, new)
        return f"truncate {name} to {new}"
    if how == "resize":
        new = rng.choice([size + rng.randrange(1, 9), size * 2, size - 4096 if size > 4096 else size // 2])
        os.truncate(path, new)
        return f"resize {name} to {new}"
    if how == "digit":                    # still valid JSON, different numbers
        with open(path, "r+b") as f:
            text = bytearray(f.read())
            digits = [i for i, c in enumerate(text) if chr(c).isdigit()] or [0]
            i = rng.choice(digits)
            text[i] = ord(rng.choice("0123456789"))
            f.seek(0)
            f.write(text)
        return f"digit {name} @{i} -> {chr(text[i])}"
    spots = []
    data_end = size
    if path.endswith(".seg"):
        frames = walk_frames(path)
        data_end = frames[-1]["pos"] + frames[-1]["length"] if frames else SEGMENT_HEADER
    with open(path, "r+b") as f:
        for _ in range(rng.randrange(1, 5)):
            region = rng.choice(["anywhere", "near-end", "start", "end"])
            if name == "state":           # the live fields sit in the first few hundred bytes
                region = rng.choice(["anywhere", "start", "start", "fields"])
            if region == "fields":
                pos = rng.randrange(64, min(size, 320)) if size > 64 else rng.randrange(0, size)
            elif region == "near-end":      # the last records: what recovery validates
                pos = rng.randrange(max(0, data_end - 2 * KiB), max(1, data_end))
            elif region == "start":       # header and first frames, or JSON's opening
                pos = rng.randrange(0, min(size, 160))
            elif region == "end":         # the index of a segment, the tail of a file
                pos = rng.randrange(max(0, size - 256), size)
            else:
                pos = rng.randrange(0, size)
            n = rng.choice([1, 1, 2, 4, 8, rng.randrange(1, 200)] if region != "fields" else [1, 1, 2, 8])
            junk = rng.choice([bytes(rng.randrange(256) for _ in range(n)), b"\0" * n, b"\xff" * n])
            f.seek(pos)
            f.write(junk[: max(0, size - pos)])
            spots.append(f"{len(junk)}@{pos}")
    return f"garbage {os.path.basename(path)} {' '.join(spots)}"


FUZZ_KINDS = {"sealed": 250, "tail": 300, "state": 250, "topic.json": 150, "broker.json": 80,
              "other": 80, "mixed": 300}


@pytest.mark.parametrize("kind", list(FUZZ_KINDS))
def test_random_damage_never_crashes_nor_lies(template, tmp_path, children, kind):
    """Seeded random garbage and truncation in one kind of broker file (or in
    several at once, "mixed"): a child opens the broker and reads it all.  It
    must never die of a signal, never raise anything but a PyQueueError,
    never return bytes that differ from those written (nor offsets past
    what was written), and each damaged partition must still take appends."""
    rng = random.Random(f"fuzz-{kind}")
    cases = []
    notes = {}
    for i in range(FUZZ_KINDS[kind]):
        root = str(tmp_path / f"case{i}")
        shutil.copytree(template, root)
        kinds = files_of(root)
        if kind == "mixed":               # mostly the binary files: damaged JSON stops the open early
            pool = ["sealed", "tail", "state"] * 6 + ["topic.json", "broker.json"]
            pool += ["other"] * 2 if kinds["other"] else []
            picks = [rng.choice(pool) for _ in range(rng.randrange(2, 5))]
        elif kind == "other" and not kinds["other"]:
            pytest.skip("the broker has no files besides segments, state and JSON")
        else:
            picks = [kind]
        notes[i] = "; ".join(damage(rng, rng.choice(kinds[k]), k) for k in picks)
        cases.append([i, root])
    written = {name: [count] * parts for name, (parts, count) in TEMPLATE_TOPICS.items()}

    failures: list[str] = []
    outcomes: dict[str, int] = {}
    todo = cases
    while todo:
        child = children.run(READER, json.dumps(todo), json.dumps(written), timeout=120)
        current = None
        for line in child.lines:
            word, _, rest = line.partition(" ")
            if word == "case":
                current = int(rest)
            elif word in ("ok", "error"):
                outcomes[line] = outcomes.get(line, 0) + 1
            else:
                failures.append(f"case {current} [{notes[current]}]: {line}")
        if child.returncode == 0:
            break
        # Died: blame the case it was in, go on with the rest.
        failures.append(f"case {current} [{notes.get(current)}]: {child.describe()}")
        done = [c for c, _ in todo].index(current) + 1 if current is not None else len(todo)
        todo = todo[done:]
    assert not failures, f"{len(failures)} bad outcome(s) of {len(cases)}:\n" + "\n".join(failures[:8])
    assert sum(outcomes.values()) == len(cases)
