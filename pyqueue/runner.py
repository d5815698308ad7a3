"""Consumer.run(): the worker loop of a queue-mode consumer.

handler(msg) returns -> ack; raises -> nack with the consumer's backoff, or
dead letter once the message has had max_deliveries deliveries.  With
concurrency > 1, handlers run on that many threads and the loop never holds
more leases than there are free threads.  The loop ends on close(), on
stop(), or on SIGTERM/SIGINT (when run from the main thread): handlers that
started finish and are acked or nacked; nothing else is held.
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Callable, Optional

from pyqueue._native import Message
from pyqueue.errors import Closed, LeaseLost

if TYPE_CHECKING:
    from pyqueue.queue_consumer import QueueConsumer

_POLL = 0.25   # seconds a poll waits before looking at the stop flag again


class Runner:
    def __init__(self, consumer: "QueueConsumer", handler: Callable[[Message], Any], concurrency: int,
                 install_signal_handlers: bool) -> None:
        self.consumer = consumer
        self.handler = handler
        self.concurrency = concurrency
        self.stopping = threading.Event()
        self.install_signal_handlers = install_signal_handlers
        self.handled = 0

    def stop(self, *_args: object) -> None:
        self.stopping.set()

    def run(self) -> int:
        """Returns the number of messages handled (acked, retried or dead-lettered)."""
        previous = {}
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self.stop)
        try:
            if self.concurrency == 1:
                self._run_inline()
            else:
                self._run_pool()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.handled

    def _poll(self, n: int) -> list[Message]:
        try:
            return self.consumer.poll_batch(n, timeout=_POLL)
        except Closed:
            self.stopping.set()
            return []

    def _run_inline(self) -> None:
        while not self.stopping.is_set():
            for i, m in enumerate(msgs := self._poll(1)):
                if self.stopping.is_set():
                    self._release(msgs[i:])
                    break
                self._handle(m)

    def _run_pool(self) -> None:
        running: set[Future] = set()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="pyqueue-handler") as pool:
            while not self.stopping.is_set():
                free = self.concurrency - len(running)
                if free == 0:
                    done, running = wait(running, timeout=_POLL, return_when=FIRST_COMPLETED)
                    running = set(running)
                    continue
                for m in self._poll(free):
                    running.add(pool.submit(self._handle, m))
                running = {f for f in running if not f.done()}
            wait(running)          # started handlers finish

    def _handle(self, m: Message) -> None:
        try:
            self.handler(m)
        except Exception as e:      # the handler's failure is the message's, not the loop's
            try:
                self.consumer._fail(m, e)
            except (LeaseLost, Closed):
                pass
        else:
            try:
                m.ack()
            except (LeaseLost, Closed):
                pass                # it went to another worker meanwhile: theirs counts
        self.handled += 1

    def _release(self, msgs: list[Message]) -> None:
        for m in msgs:
            try:
                self.consumer._give_back(m)
            except (LeaseLost, Closed):
                pass


def run(consumer: "QueueConsumer", handler: Callable[[Message], Any], concurrency: int = 1,
        install_signal_handlers: bool = True, runner_out: Optional[list] = None) -> int:
    if not callable(handler):
        raise TypeError("handler must be callable")
    if type(concurrency) is not int or not 1 <= concurrency <= 1024:
        from pyqueue.errors import ConfigError
        raise ConfigError(f"concurrency={concurrency!r} must be an int in 1..1024")
    r = Runner(consumer, handler, concurrency, install_signal_handlers)
    consumer._runner = r
    if consumer._stop_requested:           # stop() came before run(): set first, then read
        r.stop()
    try:
        return r.run()
    finally:
        consumer._runner = None
        consumer._stop_requested = False
