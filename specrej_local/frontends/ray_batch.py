"""`specrej-local batch --ray`: the same batch, its prompts answered by Ray actors.

Each worker is one Ray actor holding a loaded SpecRej, and decodes up to K prompts at once
(`--concurrent`, per worker; by default the API's choice for the settings), their candidates
sharing every step as in a single-process batch (`feeder.Feeder` over `SpecRej.decode_jobs`).
The driver keeps at most K prompts in flight on each worker and hands the next one to the worker
with the most room, so a slow worker takes fewer of them. The driver alone writes OUT, through
batch's ResultsFile, so resume, the lock and fsync'ed lines work as in a single-process batch
(`batch_io`). A worker that dies (killed, out of memory) loses only its prompts in flight: the
death is counted once, Ray restarts the worker (a few times at most), and each lost prompt goes
to the next free worker, up to MAX_ATTEMPTS tries before an error line.

Ray is an optional extra: `pip install "specrej-local[ray]"`.
"""
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from typing import Iterator, Optional

from .batch_io import ResultsFile, answer_one, error_record, outcome_record
from .feeder import Feeder
from .options import load, make_settings
from ..api import MAX_CONCURRENT, default_concurrency
from ..errors import SpecRejError
from ..schedule import Job as Scheduled

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


class PromptFeeder(Feeder):
    """The prompts one worker is answering, decoded together on its SpecRej (see `Feeder`)."""

    def schedule(self, pending: "Pending") -> Scheduled:
        return Scheduled(pending, pending.prompt, pending.settings)

    def settle(self, pending: "Pending", outcome):
        pending.outcome = outcome
        pending.done.set()


class Pending:
    """One prompt handed to the feeder, and its outcome once decoded."""

    def __init__(self, prompt, settings):
        self.prompt, self.settings = prompt, settings
        self.outcome, self.done = None, threading.Event()


class Worker:
    """One worker slot: the models loaded once, then up to `concurrent` prompts at a time,
    decoded together (run as a threaded Ray actor: each `answer` call waits in a thread of its
    own while one feeder thread makes every llama.cpp call). `concurrent` None: the API's default
    for these settings and this device; 1: one prompt after another, as a plain batch.

    A load failure is kept, not raised, so the driver can report it once as the reason to stop."""

    def __init__(self, model: dict, options: dict, concurrent: Optional[int] = None):
        self.options = options
        self.generator, self.reward = model["generator"], model["reward"]
        self.concurrent, self.feeder = concurrent or 1, None
        self.at_once, self.most_at_once, self.counting = 0, 0, threading.Lock()
        try:
            self.s, self.problem = load(**model), None
        except SpecRejError as e:
            self.s, self.problem = None, " ".join(str(e).split())
            return
        if concurrent is None:
            self.concurrent = default_concurrency(make_settings(**options).n, self.s.model.on_gpu)
        if self.concurrent > 1:
            self.feeder = PromptFeeder(self.s, self.concurrent, name="specrej-ray-worker")
            self.feeder.start()

    def ready(self) -> tuple:
        """(this worker's process id, None, prompts it takes at once) once the models are loaded,
        else (pid, why not, 0)."""
        return os.getpid(), self.problem, 0 if self.problem else self.concurrent

    def pid(self) -> int:
        return os.getpid()

    def most_prompts_at_once(self) -> int:
        """The most `answer` calls this process has held at the same time."""
        return self.most_at_once

    def answer(self, it) -> dict:
        with self.counting:
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            return self._answer(it)
        finally:
            with self.counting:
                self.at_once -= 1

    def _answer(self, it) -> dict:
        if self.problem:
            return error_record(it, f"{it.where}: the worker could not load the models: {self.problem}")
        if self.feeder is None or it.error:
            return answer_one(self.s, it, self.options, self.generator, self.reward)
        opts = {**self.options, **it.settings}
        try:
            pending = Pending(it.prompt, make_settings(**opts))
        except SpecRejError as e:  # this prompt's own settings
            return outcome_record(it, e, opts, self.generator, self.reward)
        self.feeder.jobs.put(pending)
        pending.done.wait()
        if isinstance(pending.outcome, Exception) and not isinstance(pending.outcome, SpecRejError):
            raise pending.outcome  # a bug in a shared step: Ray reports it, the driver writes an error line
        return outcome_record(it, pending.outcome, opts, self.generator, self.reward)


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

    def __init__(self, address: str, workers: int, gpus_per_worker: float, model: dict, options: dict,
                 concurrent: Optional[int] = None):
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
            # a thread for each prompt it may take, and two for ready() and pid() beside them
            remote = self.ray.remote(Worker).options(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=MAX_RESTARTS,
                                                     max_concurrency=(concurrent or MAX_CONCURRENT) + 2)
            self.actors = [remote.remote(model, options, concurrent) for _ in range(workers)]
        except BaseException:
            self.close()
            raise

    def _connect(self, address, workers):
        ray = self.ray
        if ray.is_initialized():
            return
        quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
        try:
            with sigterm_kept():
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
        """The OUT line of every item, in the order they finish. Each worker has as many prompts
        in flight as its ready() said it takes at once; the next ones wait here."""
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
        stale = {}               # actor index -> failed ready() calls since the last counted death
        free = {}                # actor index -> prompts it may still take now
        starting = {a.ready.remote(): i for i, a in enumerate(self.actors)}
        running, last_loss = {}, None  # running: ref -> (actor index, item, the process it went to)

        def lost(i, process, e) -> bool:
            """Count worker i's death once per process; True when this is the first word of it."""
            nonlocal last_loss
            if (i, process) in counted:
                return False
            counted.add((i, process))
            deaths[i], stale[i], free[i] = deaths.get(i, 0) + 1, 0, 0
            last_loss = f"worker {i + 1} died: {short(e)}"
            self.losses.append(last_loss)
            return True

        def restart(i):
            """Ask worker i, which Ray brings back, to say when it is ready (once at a time)."""
            if deaths[i] <= MAX_RESTARTS and stale[i] <= MAX_STALE and i not in starting.values():
                starting[self.actors[i].ready.remote()] = i

        while queue or running:
            while queue and any(free.values()):  # hand out work to the worker with most room
                i = max(free, key=free.get)
                it = queue.popleft()
                free[i] -= 1
                running[self.actors[i].answer.remote(it)] = (i, it, pid[i])
            if not running and not starting:  # every worker is gone for good
                while queue:
                    it = queue.popleft()
                    yield error_record(it, f"{it.where}: no Ray worker left ({last_loss})")
                break
            [ref], _ = ray.wait([*starting, *running], num_returns=1)
            if ref in starting:
                i = starting.pop(ref)
                try:
                    process, problem, takes = ray.get(ref)
                except worker_lost_errors(ray) as e:
                    if not lost(i, pid.get(i), e):  # Ray has not noticed the death yet: ask again
                        stale[i] += 1
                        time.sleep(RETRY_S)
                    restart(i)
                    continue
                except ray.exceptions.RayTaskError as e:  # cannot happen with ready(); the worker is unusable
                    last_loss = f"worker {i + 1} failed: {short(e)}"
                    self.losses.append(last_loss)
                    continue
                if problem is not None:
                    raise RayError(f"a Ray worker could not load the models: {problem}")
                pid[i], free[i] = process, takes
                continue
            i, it, process = running.pop(ref)
            try:
                value = ray.get(ref)
            except worker_lost_errors(ray) as e:  # the prompt was lost with its worker
                if lost(i, process, e):
                    restart(i)
                attempts[id(it)] = attempts.get(id(it), 0) + 1
                if attempts[id(it)] < MAX_ATTEMPTS:
                    queue.appendleft(it)
                else:
                    yield error_record(it, f"{it.where}: its worker died {MAX_ATTEMPTS} times "
                                           f"(last: {last_loss})")
                continue
            except ray.exceptions.RayTaskError as e:  # a bug in the worker: this prompt only
                value = error_record(it, f"{it.where}: the worker failed: {short(e)}")
            if (i, process) not in counted:  # its room is free again, unless that process died since
                free[i] += 1
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


@contextlib.contextmanager
def sigterm_kept():
    """ray.init makes SIGTERM exit the driver at once (sys.exit(15)): no summary line, and status 15
    rather than the 143 of every other command. The handler it found is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if handler is not None:  # None: set outside Python, nothing to put back
            signal.signal(signal.SIGTERM, handler)


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
