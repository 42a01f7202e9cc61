"""`specrej-local batch --ray`: the same batch, its prompts answered by Ray actors.

Each worker is one Ray actor holding a loaded SpecRej; prompts go to whichever worker is free,
so a slow worker takes fewer of them. The driver alone writes OUT, through batch's ResultsFile,
so resume, the lock and fsync'ed lines work as in a single-process batch (`batch_io`). A worker that dies
(killed, out of memory) loses only its prompt in flight: Ray restarts it (a few times at most)
and the prompt goes to the next free worker, up to MAX_ATTEMPTS tries before an error line.

Ray is an optional extra: `pip install "specrej-local[ray]"`.
"""
import contextlib
import logging
import os
import socket
import time
from collections import deque
from typing import Iterator, Optional

from .batch_io import ResultsFile, answer_one, error_record
from .options import load
from ..errors import SpecRejError

LOCAL = "local"        # --ray with no ADDRESS: start a Ray instance on this machine for the run
PROBE_S = 5.0          # how long to wait for a TCP answer from an explicit host:port, then for its first frame
# An HTTP/2 client's opening (the connection preface and an empty SETTINGS frame). Ray's GCS and its
# Ray Client server speak gRPC over HTTP/2, and answer it at once with a SETTINGS frame of their own.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4     # the frame type byte of a SETTINGS frame
MAX_ATTEMPTS = 3       # tries per prompt when its worker dies under it
MAX_RESTARTS = 3       # times Ray brings back one worker after it died
RETRY_S = 0.2          # pause before asking again a worker whose death Ray has not noticed yet
MAX_STALE = 150        # such calls (30 s of them) before that worker counts as gone for good
INSTALL_HINT = 'pip install "specrej-local[ray]"'


class RayError(SpecRejError):
    """Ray is missing, cannot be reached, or cannot place the workers asked for."""


def require_ray():
    """The ray module, or a one-line RayError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class Worker:
    """One worker slot: the models loaded once, then one prompt at a time (run as a Ray actor).

    A load failure is kept, not raised, so the driver can report it once as the reason to stop."""

    def __init__(self, model: dict, options: dict):
        self.options = options
        self.generator, self.reward = model["generator"], model["reward"]
        try:
            self.s, self.problem = load(**model), None
        except SpecRejError as e:
            self.s, self.problem = None, " ".join(str(e).split())

    def ready(self) -> tuple:
        """(this worker's process id, None) once the models are loaded, else (pid, why not)."""
        return os.getpid(), self.problem

    def pid(self) -> int:
        return os.getpid()

    def answer(self, it) -> dict:
        if self.problem:
            return error_record(it, f"{it.where}: the worker could not load the models: {self.problem}")
        return answer_one(self.s, it, self.options, self.generator, self.reward)


def check_reachable(address: str):
    """Refuse in seconds an explicit `host:port` or `ray://host:port` that nothing answers on, or
    where something other than Ray's gRPC answers (a web server, a database): Ray itself retries
    such an address for minutes, or for ever. Other forms (`auto`) are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    if not 0 < int(port) < 65536:
        raise RayError(f"cannot reach Ray at {address!r}: port {port} is not a TCP port (1-65535)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S) as conn:
            frame = _first_frame(conn)
    except OSError as e:
        why = "no answer" if isinstance(e, socket.timeout) else e.strerror or str(e)
        raise RayError(f"cannot reach Ray at {address!r}: {why} (is the cluster up, and is this its "
                       "address and port?)") from None
    if len(frame) < 9 or frame[3] != HTTP2_SETTINGS:
        said = "said nothing" if not frame else "did not answer as a gRPC server"
        raise RayError(f"cannot reach Ray at {address!r}: something listens there but {said} in "
                       f"{PROBE_S:g} s, so it is not Ray (is this the cluster's address and port?)")


def _first_frame(conn) -> bytes:
    """Up to 9 bytes, the header of the first HTTP/2 frame, that the server sends after our
    opening, before it closes the connection or PROBE_S pass."""
    conn.sendall(HTTP2_HELLO)
    data = b""
    with contextlib.suppress(socket.timeout):
        while len(data) < 9:
            chunk = conn.recv(9 - len(data))
            if not chunk:
                break
            data += chunk
    return data


class RayPool:
    """K workers on a Ray cluster, as a context manager. ADDRESS `local` starts a small Ray
    instance for the run (stopped at the end); anything else is passed to ray.init (`auto`,
    `ray://host:port`, `host:port`). A Ray already connected in this process is used as it is."""

    def __init__(self, address: str, workers: int, gpus_per_worker: float, model: dict, options: dict):
        if workers < 1:
            raise RayError(f"--workers must be at least 1, got {workers}")
        if gpus_per_worker < 0:
            raise RayError(f"--gpus-per-worker must be 0 or more, got {gpus_per_worker}")
        self.ray = require_ray()
        self.started = False
        self.actors, self.losses = [], []
        self._connect(address, workers)
        try:
            self._check_room(address, workers, gpus_per_worker)
            remote = self.ray.remote(Worker).options(num_cpus=1, num_gpus=gpus_per_worker,
                                                     max_restarts=MAX_RESTARTS)
            self.actors = [remote.remote(model, options) for _ in range(workers)]
        except BaseException:
            self.close()
            raise

    def _connect(self, address, workers):
        ray = self.ray
        if ray.is_initialized():
            return
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
        try:
            if address == LOCAL:
                ray.init(num_cpus=workers, object_store_memory=100 * 2**20, include_dashboard=False, **quiet)
            else:
                check_reachable(address)
                ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise RayError(f"cannot start or join Ray at {address!r}: {' '.join(str(e).split())}") from None
        self.started = True

    def _check_room(self, address, workers, gpus_per_worker):
        """Refuse at once what a Ray instance started here can never place (it would wait forever);
        a cluster may grow, so there the workers simply wait for room."""
        if address != LOCAL or not self.started:
            return
        have = self.ray.cluster_resources().get("GPU", 0)
        if workers * gpus_per_worker > have:
            raise RayError(f"{workers} workers x {gpus_per_worker:g} GPUs need {workers * gpus_per_worker:g} "
                           f"GPUs; this machine has {have:g} (see --workers, --gpus-per-worker)")

    def pids(self) -> list:
        """The process id of each worker (waits for its models to load)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def answers(self, items) -> Iterator[dict]:
        """The OUT line of every item, in the order they finish."""
        ray, queue = self.ray, deque()
        for it in items:
            if it.error:
                yield error_record(it, it.error)
            else:
                queue.append(it)
        attempts = {}            # id(item) -> tries that ended with its worker dead
        deaths = {}              # actor index -> deaths counted
        pid = {}                 # actor index -> its process, as its last ready() reported it
        counted = set()          # (actor index, pid): each process's death is counted once
        stale = {}               # actor index -> failed calls since the last counted death
        starting = {a.ready.remote(): i for i, a in enumerate(self.actors)}
        running, idle, last_loss = {}, deque(), None
        while queue or running:
            while idle and queue:  # hand out work as workers free up
                i, it = idle.popleft(), queue.popleft()
                running[self.actors[i].answer.remote(it)] = (i, it)
            if not running and not starting:  # every worker is gone for good
                while queue:
                    it = queue.popleft()
                    yield error_record(it, f"{it.where}: no Ray worker left ({last_loss})")
                break
            [ref], _ = ray.wait([*starting, *running], num_returns=1)
            i, it = starting.pop(ref, None), None
            if i is None:
                i, it = running.pop(ref)
            try:
                value = ray.get(ref)
            except worker_lost_errors(ray) as e:
                # Until Ray notices a death, calls to that actor fail too: they count no new death.
                died = (i, pid.get(i)) not in counted
                if died:
                    counted.add((i, pid.get(i)))
                    deaths[i], stale[i] = deaths.get(i, 0) + 1, 0
                    last_loss = f"worker {i + 1} died: {short(e)}"
                    self.losses.append(last_loss)
                else:
                    stale[i] += 1
                    time.sleep(RETRY_S)  # give Ray the moment it takes to notice
                if deaths[i] <= MAX_RESTARTS and stale[i] <= MAX_STALE:  # Ray restarts it; ready once reloaded
                    starting[self.actors[i].ready.remote()] = i
                if it is not None:
                    attempts[id(it)] = attempts.get(id(it), 0) + died
                    if attempts[id(it)] < MAX_ATTEMPTS:
                        queue.appendleft(it)
                    else:
                        yield error_record(it, f"{it.where}: its worker died {MAX_ATTEMPTS} times "
                                               f"(last: {last_loss})")
                continue
            except ray.exceptions.RayTaskError as e:  # a bug in the worker: this prompt only
                idle.append(i)
                if it is None:
                    continue
                yield error_record(it, f"{it.where}: the worker failed: {short(e)}")
                continue
            if it is None:  # a worker finished loading
                pid[i], problem = value
                if problem is not None:
                    raise RayError(f"a Ray worker could not load the models: {problem}")
                idle.append(i)
            else:
                idle.append(i)
                yield value

    def summary(self) -> Optional[str]:
        """One line on the workers lost during the run (None when none was)."""
        if not self.losses:
            return None
        return (f"Ray: {len(self.losses)} worker death(s), their prompts handed to other workers; "
                f"last: {self.losses[-1]}")

    def close(self):
        """Stop the workers and, when this run started Ray, Ray itself."""
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # already gone, or Ray is down: nothing left to stop
                pass
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def worker_lost_errors(ray) -> tuple:
    """Ray's errors for a call whose worker process went away (killed, out of memory, node lost)."""
    ex = ray.exceptions
    return tuple(getattr(ex, name) for name in ("RayActorError", "WorkerCrashedError", "OutOfMemoryError",
                                                "ObjectLostError", "NodeDiedError") if hasattr(ex, name))


def short(e: Exception) -> str:
    """The first line of an error, for an OUT line."""
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def answer_all(pool: RayPool, items, out: ResultsFile) -> Iterator[dict]:
    """Like batch_io.answer_all, with `pool` answering: each line appended to OUT as it finishes."""
    for rec in pool.answers(items):
        out.append(rec)
        yield rec
