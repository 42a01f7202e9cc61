"""Continuous batching: several prompts decoded at once over one shared pool of sequences.

Each prompt keeps its own `decoder.Run`, with its own KV budget, cuts, rounds and result; its
algorithm (`Run.steps`) is a generator that stops wherever it needs a generation step. The
scheduler only decides when a prompt starts, and drives every active run with one shared step:

    while prompts wait or runs are active:
        admit the next prompts, first come first served, while the room that cuts and finished
            answers gave back (sequences, KV cells) holds the next one's first phase
        one step for every live candidate of every active prompt (a single decode)
        hand each run the candidates of its own that finished; a run that ends gives its room back

A prompt reserves its whole budget when it starts and never grows past it, so one prompt's cut
cannot take room another needs, and every active prompt takes part in every step. Admission is
first come first served: a large prompt at the head waits for room rather than being overtaken
for ever. Nothing here calls llama.cpp: the pool (`llama.pool.KvPool`, or `tests/fakes.py`'s)
hands out one engine per prompt and decodes for all of them at once.
"""
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

from .decoder import Interrupted, Run, Settings
from .errors import SpecRejError

PENDING = object()  # a run that wants another step
END = object()      # no job will come any more


@dataclass
class Job:
    key: object                          # what the caller knows it by (an index, an id)
    prompt: object                       # a string or a message list
    settings: Settings
    on_round: Optional[Callable] = None
    should_stop: Optional[Callable] = None  # True: this job alone ends as Interrupted


def decode_many(pool, make_scorer: Callable, jobs: Iterable[Job], concurrent: int) -> Iterator[tuple]:
    """Yield (job.key, Result) for each job as it finishes, at most `concurrent` at a time; a job
    that fails yields (key, the SpecRejError) and the others go on. Ctrl-C (KeyboardInterrupt)
    ends them all, every active prompt's room given back.

    `jobs` may be open-ended (a server's requests): None from it means "none waiting now", and
    the runs go on; it is asked again after every step (it should block while `pool.idle()`)."""
    jobs = iter(jobs)
    head = None   # (job, run): the next prompt, read and planned, waiting for room
    active = {}   # engine -> (job, run, its steps)
    more = True   # jobs may still come
    try:
        while True:
            # 1. admit prompts while the room freed holds the next one's first phase
            while len(active) < concurrent:
                if head is None:
                    job = next(jobs, END) if more else END
                    if job is END:
                        more = False
                    if job is END or job is None:
                        break
                    head = _started(pool, make_scorer, job)
                    if not isinstance(head, tuple):
                        yield job.key, head
                        head = None
                        continue
                job, run = head
                if active and job.should_stop is not None and job.should_stop():
                    # its caller left (or the server is stopping) while it waited for room: it ends
                    # now, before it takes any, and the next one behind it may start
                    head = None
                    _done(run)
                    yield job.key, Interrupted(run.waited())
                    continue
                if active and not run.engine.fits(run.s.n, run.at_once, run.budget, run.T):
                    break  # wait for room; the prompts running now free theirs as they finish
                head = None
                steps = run.steps()
                active[run.engine] = (job, run, steps)  # from here on, Ctrl-C (even in its prompt) frees its room
                outcome = _resume(job, steps, None)
                if outcome is not PENDING:
                    _done(run)
                    del active[run.engine]
                    yield job.key, outcome
            if not active:
                if head is None and not more:
                    return
                continue
            # 2. one generation step shared by every active prompt
            finished = pool.step()
            # 3. each run takes its own finished candidates and goes on to its next step
            for engine, (job, run, steps) in list(active.items()):
                outcome = _resume(job, steps, finished.get(engine, []))
                if outcome is not PENDING:
                    _done(run)
                    del active[engine]
                    yield job.key, outcome
    finally:  # Ctrl-C, an error in the shared step, or a caller that stopped reading
        for _, run, _ in active.values():
            _done(run)
        if isinstance(head, tuple):
            _done(head[1])


def _done(run: Run):
    """The run's room goes back to the pool, and its scorer's own resources are freed."""
    run.engine.finish()
    close = getattr(run.scorer, "close", None)
    if close:
        close()


def _started(pool, make_scorer, job: Job):
    """(job, Run) with the prompt read and the run planned, or the SpecRejError that stops it."""
    engine = pool.engine()
    run = Run(engine, make_scorer(engine), job.settings, job.on_round, job.should_stop)
    try:
        run.start(job.prompt)
    except BaseException as e:  # Ctrl-C included: the scorer may hold a context of its own
        _done(run)
        return _failure(job, e)
    return job, run


def _resume(job: Job, steps, finished):
    """Run the algorithm on to its next step: PENDING, or its Result, or the SpecRejError it
    ended with."""
    try:
        steps.send(finished)
        return PENDING
    except StopIteration as done:
        return done.value
    except Exception as e:
        return _failure(job, e)


def _failure(job: Job, e: BaseException) -> SpecRejError:
    """The SpecRejError that ends this job alone; anything else is raised again. A stop that the
    job's own should_stop did not ask for was Ctrl-C: it ends all."""
    if isinstance(e, Interrupted) and (job.should_stop is None or not job.should_stop()):
        raise KeyboardInterrupt from None
    if isinstance(e, SpecRejError):
        return e
    raise e
