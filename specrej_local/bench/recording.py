"""Reading `bench --compute` recordings (compute.json) back for `--compute-from`: every field the
analysis reads is checked first, so a damaged or hand-edited file is refused in one line that
names the field (`pools[3].sequences[5].rewards[2]`), not met later as a traceback or, worse,
analysed into figures that mean nothing."""
import json
import math
import os

import click

from ..errors import BadInput
from ..files import MB, read_regular_text

MAX_BYTES = 1024 * MB  # 100 prompts at N = 256 and 512 tokens a reward each step is about 1.3 GB of JSON
LARGEST = 1 << 24       # token counts, steps and cells: beyond any context llama.cpp runs


class Damaged(BadInput):
    pass


def _fail(where: str, what: str, value):
    shown = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    raise Damaged(f"{where} {what}, got {shown[:40]}")


def whole(d: dict, key: str, where: str, low: int = 0, high: int = LARGEST) -> int:
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        _fail(f"{where}.{key}", f"must be a whole number from {low} to {high}", v)
    return v


def number(v, where: str, low: float = -math.inf) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < low:
        _fail(where, "must be a finite number" + (f" of at least {low:g}" if low > -math.inf else ""), v)
    return v


def field(d: dict, key: str, where: str, low: float = -math.inf) -> float:
    return number(d.get(key), f"{where}.{key}", low)


def items(v, where: str, kind=dict, min_len: int = 0) -> list:
    if not isinstance(v, list) or len(v) < min_len or not all(isinstance(x, kind) for x in v):
        what = {dict: "objects", list: "lists"}.get(kind, "values")
        _fail(where, f"must be a list of {min_len or 'zero'} or more {what}", v)
    return v


def profile(v, where: str, width: int):
    """Steps [live, kv_used(, seconds)]: whole numbers, and seconds at least 0."""
    for t, row in enumerate(items(v, where, list)):
        if len(row) != width:
            _fail(f"{where}[{t}]", f"must hold {width} values", len(row))
        for j, x in enumerate(row[:2]):
            if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= LARGEST:
                _fail(f"{where}[{t}][{j}]", "must be a whole number of at least 0", x)
        if width == 3:
            number(row[2], f"{where}[{t}][2]", 0)


def check_pool(p: dict, where: str):
    T = whole(p, "max_tokens", where, 1)
    whole(p, "prompt_tokens", where, 1)
    whole(p, "kv_base", where)
    field(p, "wall_s", where, 0)
    profile(p.get("step_profile"), f"{where}.step_profile", 3)
    seqs = items(p.get("sequences"), f"{where}.sequences", dict, 1)
    for i, q in enumerate(seqs):
        w = f"{where}.sequences[{i}]"
        steps = whole(q, "steps", w, 1, T)
        if q.get("finish_reason") not in ("stop", "length"):
            _fail(f"{w}.finish_reason", "must be 'stop' or 'length'", q.get("finish_reason"))
        rewards = items(q.get("rewards"), f"{w}.rewards", object, 1)
        if len(rewards) != steps:
            raise Damaged(f"{w}.rewards holds {len(rewards)} rewards for {steps} steps (one per step)")
        for t, r in enumerate(rewards):
            number(r, f"{w}.rewards[{t}]")
    if p.get("judged") is not None:
        judged = items(p["judged"], f"{where}.judged", object)
        if len(judged) != len(seqs):
            raise Damaged(f"{where}.judged holds {len(judged)} scores for {len(seqs)} answers")
        for i, r in enumerate(judged):
            number(r, f"{where}.judged[{i}]")
        field(p, "judge_s", where, 0)
        whole(p, "judge_fed", where)


RUNS = {  # each list of runs: its whole-number fields and its other number fields (at least 0 unless signed)
    "validation": (("n", "real_tokens", "replay_tokens"), ("real_step_s", "real_wall_s"),
                   ("real_reward", "replay_reward")),
    "calibration": (("n", "tokens"), ("wall_s",), ()),
    "judged_runs": (("n", "generated_tokens", "judge_fed", "rounds"), ("judge_s", "wall_s"), ("reward", "pool_reward")),
}


def check_runs(d: dict, key: str, pools: int):
    wholes, seconds, signed = RUNS[key]
    for k, r in enumerate(items(d.get(key, []), key)):
        w = f"{key}[{k}]"
        whole(r, "prompt", w, 0, pools - 1)
        for name in wholes:
            whole(r, name, w, 1 if name == "n" else 0)
        for name in seconds:
            field(r, name, w, 0)
        for name in signed:
            field(r, name, w)
        if key == "validation":
            profile(r.get("replay_profile"), f"{w}.replay_profile", 2)
            profile(r.get("real_profile", []), f"{w}.real_profile", 3)
        elif key == "calibration":
            profile(r.get("step_profile"), f"{w}.step_profile", 3)
        elif r["wall_s"] <= 0:
            _fail(f"{w}.wall_s", "must be more than 0", r["wall_s"])


def check_recording(d) -> None:
    """Damaged, naming the first field that is wrong, unless `d` is a compute study's recording."""
    if not isinstance(d, dict) or "pools" not in d:
        raise Damaged("it holds no 'pools': it is not a compute.json written by bench --compute")
    pools = items(d["pools"], "pools", dict, 1)
    for k, p in enumerate(pools):
        check_pool(p, f"pools[{k}]")
    if len({p.get("judged") is None for p in pools}) > 1:
        raise Damaged("some pools have self-judge scores ('judged') and others not")
    if not isinstance(d.get("settings", {}), dict):
        _fail("settings", "must be an object", d["settings"])
    for key in RUNS:
        check_runs(d, key, len(pools))
    for key in ("train", "test"):
        if key in d:
            idx = items(d[key], key, int, 1)
            if any(isinstance(i, bool) or not 0 <= i < len(pools) for i in idx) or len(set(idx)) < len(idx):
                raise Damaged(f"{key} must list distinct pool numbers from 0 to {len(pools) - 1}")


def read_recording(path) -> dict:
    text = read_regular_text(path, "the recording", MAX_BYTES)
    try:
        d = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise BadInput(f"{path} is not JSON: not a compute.json written by bench --compute") from None
    try:
        check_recording(d)
    except Damaged as e:
        raise Damaged(f"{path}: {e}") from None
    return d


def read_recordings(paths) -> list:
    """--compute-from's files, each checked to be a compute study's recording; the same file twice
    (by any name) or recordings of another N_max are refused, as their merged split would mislead."""
    recordings, seen = [], []
    for path in paths:
        if any(os.path.exists(path) and os.path.samefile(path, other) for other in seen):
            raise BadInput(f"{path} is given twice: its prompts would be both the training and the test prompts")
        seen.append(path)
        d = read_recording(path)
        if d.get("interrupted"):
            click.echo(f"Note: {path} was cut short by Ctrl-C ({len(d['pools'])} pools).", err=True)
        recordings.append(d)
    sizes = sorted({len(p["sequences"]) for d in recordings for p in d["pools"]})
    if len(sizes) > 1:
        raise BadInput(f"the recordings hold pools of {' and '.join(map(str, sizes))} answers: merge only "
                       "recordings made with the same N_max")
    judged = [p for p, d in zip(paths, recordings) if d["pools"][0].get("judged") is not None]
    if judged and len(judged) < len(recordings):
        plain = next(p for p, d in zip(paths, recordings) if d["pools"][0].get("judged") is None)
        click.echo(f"Note: {plain} has no self-judge scores (recorded without --rewards logprob,self), so the "
                   f"self-judge study of {judged[0]} is left out; the logprob study uses every recording.", err=True)
    return recordings
