"""`bench --continuous`: continuous batching against one prompt at a time, side by side.

For each method and N, the same prompts are answered twice by one loaded SpecRej: one prompt
after another (`SpecRej.generate`) and several at once (`SpecRej.generate_many`), in the same
process, one right after the other; which half goes first alternates from row to row, so a load
that drifts favours neither. The models are loaded, and one short warm-up run made, before any
clock starts. Each row also counts the prompts whose every candidate came out the same both ways.
"""
import os
import time

from ..api import default_concurrency
from ..errors import SpecRejError

HEADER = ("method   N  K  one-at-a-time p/s  tok/s | continuous p/s  tok/s | x prompts/s  same answers  layout")


def timed(fn):
    t = time.perf_counter()
    results = fn()
    return results, time.perf_counter() - t


def measure(s, prompts: list, methods, ns, max_tokens: int, concurrent, threads: int, decoding: dict, echo,
            rows=None) -> list:
    """One row per method and N on the loaded SpecRej `s`; `decoding`: alpha, sampling and seed,
    shared by both halves. `concurrent` None: the API's default for each N. Each row is passed to
    `echo` as a line of the table as soon as it is measured, and appended to `rows` (returned),
    so an interrupt leaves there every row finished."""
    rows = [] if rows is None else rows
    s.generate(prompts[0], n=2, max_tokens=4, seed=0)  # first-call allocations before any clock
    for method in methods:
        for n in ns:
            opts = dict(decoding, n=n, method=method, max_tokens=max_tokens)
            k = concurrent or default_concurrency(n, s.model.on_gpu)
            run_alone = lambda: timed(lambda: [s.generate(q, **opts) for q in prompts])  # noqa: E731
            run_many = lambda: timed(lambda: dict(s.generate_many(prompts, concurrent=k, **opts)))  # noqa: E731
            if len(rows) % 2 == 0:  # alternate which half goes first, so a drifting load favours neither
                (alone, t1), (many, t2) = run_alone(), run_many()
            else:
                (many, t2), (alone, t1) = run_many(), run_alone()
            bad = [r for r in many.values() if isinstance(r, Exception)]
            if bad:
                raise SpecRejError(f"a prompt failed beside others: {bad[0]}")
            tok1 = sum(r.stats["generated_tokens"] for r in alone)
            tok2 = sum(r.stats["generated_tokens"] for r in many.values())
            same = sum([c.text for c in a.candidates] == [c.text for c in many[i].candidates]
                       for i, a in enumerate(alone))
            row = dict(method=method, n=n, concurrent=k, prompts=len(prompts), max_tokens=max_tokens,
                       threads=threads, alone_s=t1, continuous_s=t2, alone_tokens=tok1,
                       continuous_tokens=tok2, same_answers=same, layout=alone[0].stats["kv_layout"],
                       layout_continuous=many[0].stats["kv_layout"], load_avg=os.getloadavg()[0])
            rows.append(row)
            echo(row_line(row))
    return rows


def row_line(row: dict) -> str:
    p, t1, t2 = row["prompts"], row["alone_s"], row["continuous_s"]
    return (f"{row['method']:7} {row['n']:3} {row['concurrent']:2}  {p / t1:17.3f} {row['alone_tokens'] / t1:6.1f} | "
            f"{p / t2:14.3f} {row['continuous_tokens'] / t2:6.1f} | {t1 / t2:11.2f}  "
            f"{row['same_answers']:5}/{p:<6}  {row['layout']}/{row['layout_continuous']}"
            f"  (load {row['load_avg']:.1f})")
