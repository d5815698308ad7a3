"""The no-op job of bench/jobs.py, for each system: it returns the time it started.

Workers import this module (bench/ is on their PYTHONPATH).  The huey
instance exists only when BENCH_HUEY_DB names its database."""

import os
import time


def stamp():
    return time.time()


huey = None
if os.environ.get("BENCH_HUEY_DB"):
    from huey import SqliteHuey

    # BENCH_HUEY_FSYNC=off: no fsync per commit (synchronous=OFF); else SQLite's default (FULL)
    huey = SqliteHuey(filename=os.environ["BENCH_HUEY_DB"],
                      fsync=False if os.environ.get("BENCH_HUEY_FSYNC") == "off" else None)

    @huey.task()
    def huey_stamp():
        return time.time()
