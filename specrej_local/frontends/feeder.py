"""A thread that decodes the jobs other threads hand it, several at once, on one loaded SpecRej.

`serve` (one job per HTTP request) and `batch --ray` (one per prompt a Ray worker is given) both
need this: callers arrive on threads of their own, while every llama.cpp call must stay on one
thread that runs `SpecRej.decode_jobs` over all of them (continuous batching). The thread waits
for a job only while none runs; while some run, it takes whatever has arrived before each step.
A subclass says how a job becomes a `schedule.Job` (`schedule`) and what to do with its
outcome (`settle`).
"""
import queue
import sys
import threading
import traceback
from typing import Optional

from ..schedule import Job as Scheduled


class Feeder:
    fair_prefill = False  # see SpecRej.decode_jobs

    def __init__(self, specrej, concurrent: int, queue_size: int = 0, name: str = "specrej-feeder"):
        self.specrej, self.concurrent = specrej, concurrent
        self.jobs = queue.Queue(maxsize=queue_size)  # 0: unbounded
        self.running = set()  # jobs taken from the queue and not yet settled
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self):
        self.thread.start()

    def schedule(self, job) -> Optional[Scheduled]:
        """The scheduler's job for `job`, its key `job` itself; or None to drop it (settled here)."""
        raise NotImplementedError

    def settle(self, job, outcome):
        """`job` ended: `outcome` is its Result, or the exception it ended with."""
        raise NotImplementedError

    def stop(self):
        """End the thread once every job taken has ended (a subclass cancels them first)."""
        if not self.thread.is_alive():
            return
        self.jobs.put(None)
        self.thread.join()

    def _loop(self):
        while True:
            try:
                for job, outcome in self.specrej.decode_jobs(self._arrivals(), self.concurrent, self.fair_prefill):
                    self._settled(job, outcome)
                return  # stop() was called and every job has ended
            except Exception as e:  # a bug in a shared step: logged in full, its jobs get the error
                traceback.print_exc(file=sys.stderr)
                for job in list(self.running):
                    self._settled(job, e)

    def _settled(self, job, outcome):
        self.running.discard(job)
        self.settle(job, outcome)

    def _arrivals(self):
        """The jobs for the scheduler as they arrive; None tells it that nobody waits now."""
        while True:
            try:
                job = self.jobs.get(block=not self.running)
            except queue.Empty:
                yield None
                continue
            if job is None:
                return
            scheduled = self.schedule(job)
            if scheduled is None:
                continue
            self.running.add(job)
            yield scheduled
