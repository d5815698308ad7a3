"""The JetStream backend: pyqueue's API on a NATS JetStream cluster.

    broker = pyqueue.connect("nats://127.0.0.1:4222,nats://127.0.0.1:4223")

returns a JetStreamBroker with the embedded Broker's API (topics, send,
read, consumer groups in stream and queue mode, dead letters, redrive,
the scheduler, jobs);
what this backend does not provide raises Unsupported with the reason.
Needs nats-py (pip install 'pyqueue[jetstream]') and nats-server 2.9 or
newer with JetStream.  The modules, one concept each:

    broker.py          connect(), topics and their stored configuration
    topic.py           send / send_batch / read / offsets on a partition's stream
    message.py         key and headers as NATS headers; the Message class
    queue_consumer.py  queue mode: a shared durable pull consumer per partition
    stream_consumer.py stream mode: partition ownership in KV, one consumer per owner
    ownership.py       stream mode's membership, generations and commits (KV CAS)
    group_state.py     a group's stored mode and settings; deletion
    stats.py           Topic.stats(): the embedded engine's keys, from the server
    backpressure.py    max_depth: a cached view of the depth, waiting for room
    scheduler.py       the durable scheduler: schedules and progress in KV
    lease.py           one holder at a time of a KV key (the active scheduler)
    job_store.py       jobs: definitions, job states and workers in KV (broker.jobs())
    pull.py            pull requests and the buffer of delivered messages
    client.py          the connection, API requests, timeouts and retries
    bridge.py          the sync API over asyncio: one loop thread per broker
    naming.py          stream, subject, consumer and key names
    localcluster.py    a throwaway local nats-server cluster (tests, benchmarks)
"""

from pyqueue.jetstream.broker import JetStreamBroker, connect
from pyqueue.jetstream.errors import Unavailable, Unsupported

__all__ = ["connect", "JetStreamBroker", "Unsupported", "Unavailable"]
