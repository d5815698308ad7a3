"""Jobs: code that runs on demand or on a schedule in a pool of worker
processes, with time and memory limits and a status API.

    jobs = broker.jobs()
    jobs.define("resize", target="app.images:resize", timeout=60, memory_limit=1 << 30, max_retries=3)
    jid = jobs.submit("resize", "photo-456", width=640)
    jobs.result(jid, timeout=30)
    jobs.work(concurrency=2)            # or `pyqueue worker --path data/ --concurrency 2`

api.py holds the Jobs facade, definition.py what a job name runs, store.py
the durable states, worker.py the supervisor, pool.py and child.py the
processes that run the jobs, protocol.py the frames between them.
"""

from pyqueue.jobs.api import DEFAULT_KEEP, Jobs
from pyqueue.jobs.definition import JobDefinition
from pyqueue.jobs.errors import JobFailed, ResultTimeout, ResultTooLarge, UnknownJob
from pyqueue.jobs.status import FINAL_STATES, STATES, JobStatus

__all__ = ["Jobs", "JobDefinition", "JobStatus", "STATES", "FINAL_STATES", "DEFAULT_KEEP", "UnknownJob",
           "JobFailed", "ResultTimeout", "ResultTooLarge"]
