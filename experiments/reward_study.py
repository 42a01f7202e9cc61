"""Which reward ranks answers best? A verifiable arithmetic study (issue 13, section 2).

Seeded arithmetic prompts whose answer is the reply's last number. Each prompt gets n answers
from the real engine (Best-of-N, alpha 0, so every answer is complete); every answer is then
scored, whole and cut at 25% and 50% of its tokens, by each reward:

- logprob: the generator's mean token log-probability (the whole answer's value is the one the
  engine tracked while sampling; a cut's value comes from one decode pass over prompt + answer);
- self-judge probes: the generator asked a yes/no question after the answer, read as
  log P(yes) - log P(no) (an `AnswerScorer` on its own context, fed incrementally cut by cut as
  the self-judge is).

Per reward and cut: the within-prompt ROC AUC of right against wrong answers (the rank is what a
cut uses) and the share of prompts whose top-rewarded answer is right (Best-of-n).

    python experiments/reward_study.py                      # the study in experiments/RESULTS.md
    python experiments/reward_study.py --prompts 2 -n 4 --max-tokens 8 --out small.json
"""
import argparse
import json
import math
import platform
import random
import re
import time

import numpy as np

from specrej_local import SpecRej
from specrej_local.llama.context import Context
from specrej_local.llama.scorers import JUDGE_QUESTION, AnswerScorer, yes_no_readout
from specrej_local.machine import usable_cpus

CUTS = (0.25, 0.5, 1.0)  # shares of each answer's tokens it is scored at
PROBES = {  # name -> the follow-up question of a self-judge
    "self-long": "Is the answer above correct, helpful and complete? Reply with one word: yes or no.",
    "self-medium": "Is the answer correct? Reply yes or no.",
    "self-short": "Correct?",
}
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
NUMBER = re.compile(r"\d+(?:\.\d+)?")


# -- prompts and answers ---------------------------------------------------------------------
def arithmetic_prompts(count: int, seed: int = 0) -> list:
    """(prompt, answer) pairs, operations in turn: sums and differences up to 30 + 30, products of
    one-digit numbers; differences never negative; no prompt twice."""
    rng, seen, out = random.Random(seed), set(), []
    ops = list(OPERATIONS)
    while len(out) < count:
        op = ops[len(out) % len(ops)]
        if op == "*":
            a, b = rng.randint(2, 9), rng.randint(2, 9)
        else:
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            if op == "-" and b > a:
                a, b = b, a
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        out.append((f"Calculate {a} {op} {b}. End your reply with the result.", OPERATIONS[op](a, b)))
    return out


def last_number(text: str):
    found = NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def is_right(text: str, answer: int) -> bool:
    return last_number(text) == answer


def cut_length(tokens: int, share: float) -> int:
    """Tokens kept of an answer cut at `share` of its length (at least one, halves rounded up)."""
    if share >= 1 or tokens == 0:
        return tokens
    return max(1, math.floor(share * tokens + 0.5))


# -- generation ------------------------------------------------------------------------------
def generate_answers(s: SpecRej, prompts, n: int, max_tokens: int, seed: int) -> list:
    """Per prompt, its n answers: tokens, text, finish reason, whether right, and the mean
    log-probability the engine tracked while sampling it."""
    out = []
    for prompt, answer in prompts:
        r = s.generate(prompt, n=n, method="bon", max_tokens=max_tokens, seed=seed)
        seqs = s.engine.sequences
        out.append([dict(tokens=list(seqs[c.id].tokens), text=c.text, finish=c.finish_reason,
                         right=is_right(c.text, answer), logprob=c.reward) for c in r.candidates])
    return out


def partial_text(model, tokens) -> str:
    """The text of an answer's first tokens (a character cut in half is left out)."""
    return b"".join(model.piece(t) for t in tokens).decode("utf-8", "ignore")


# -- rewards ---------------------------------------------------------------------------------
def token_logprobs(model, prompt_ids, answers, n_threads) -> list:
    """Each answer's per-token log-probabilities under the generator, from one decode pass of
    prompt + answer: log-softmax of the row before each token, read at that token."""
    P = len(prompt_ids)
    cells = P + sum(len(a) for a in answers) + len(answers)
    ctx = Context(model, cells, max(1, len(answers)), n_threads=n_threads)
    try:
        head = prompt_ids[:-1]
        ctx.decode(head, range(len(head)), [0] * len(head), [False] * len(head), read=False)
        for i in range(1, len(answers)):
            ctx.copy_seq(0, i)
        rows = ([], [], [], [])
        for i, toks in enumerate(answers):
            if toks:
                fed = prompt_ids[-1:] + toks[:-1]
                rows[0].extend(fed)
                rows[1].extend(range(P - 1, P - 1 + len(fed)))
                rows[2].extend([i] * len(fed))
                rows[3].extend([True] * len(fed))
        logits = ctx.decode(*rows, chunk=model.scoring_chunk).astype(np.float64)
    finally:
        ctx.close()
    m = logits.max(axis=1, keepdims=True)
    logsm = logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))
    out, a = [], 0
    for toks in answers:
        out.append(logsm[np.arange(a, a + len(toks)), toks] if toks else np.zeros(0))
        a += len(toks)
    return out


def score_logprob(s: SpecRej, prompts, answers, threads) -> dict:
    """{cut: [per prompt, the rewards of its answers]} for the mean log-probability, and the
    largest gap between the helper and the engine on answers without an end-of-turn token."""
    scores = {c: [] for c in CUTS}
    gap = 0.0
    for (prompt, _), cands in zip(prompts, answers):
        ids = s.engine.tokenize(s.engine.chat.prompt(prompt))
        lps = token_logprobs(s.model, ids, [c["tokens"] for c in cands], threads)
        for cut in CUTS:
            row = []
            for c, lp in zip(cands, lps):
                k = cut_length(len(lp), cut)
                row.append(c["logprob"] if cut >= 1 or k == 0 else float(lp[:k].mean()))
            scores[cut].append(row)
        for c, lp in zip(cands, lps):
            if c["finish"] == "length" and len(lp):  # the engine counted no end token: same tokens
                gap = max(gap, abs(float(lp.mean()) - c["logprob"]))
    return dict(scores=scores, probe_tokens=0, helper_vs_engine=gap)


def score_probe(s: SpecRej, question: str, prompts, answers, threads) -> dict:
    """{cut: rewards} for a self-judge asking `question`, each prompt's answers fed cut by cut."""
    scorer = AnswerScorer(s.model, yes_no_readout(s.model), follow_up=question, n_threads=threads)
    scores = {c: [] for c in CUTS}
    try:
        for (prompt, _), cands in zip(prompts, answers):
            scorer.begin(prompt, None, len(cands))
            ids = list(range(len(cands)))
            for cut in CUTS:
                texts = [c["text"] if cut >= 1 else partial_text(s.model, c["tokens"][:cut_length(len(c["tokens"]), cut)])
                         for c in cands]
                scores[cut].append(scorer.score(ids, texts).tolist())
        probe = len(scorer.suffix)
    finally:
        scorer.close()
    return dict(scores=scores, probe_tokens=probe, question=question, is_default=question == JUDGE_QUESTION)


# -- metrics ---------------------------------------------------------------------------------
def roc_auc(scores, labels):
    """P(a right answer outscores a wrong one), ties counting half; None without both kinds."""
    pos = [x for x, y in zip(scores, labels) if y]
    neg = [x for x, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def top_pick(scores) -> int:
    """The answer a Best-of-n decoder returns: the highest reward, the lowest id on ties."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def mean_se(values):
    """(mean, standard error of the mean) or (None, None) for no values."""
    if not values:
        return None, None
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None


def summarize(scores_by_cut, labels) -> dict:
    out = {}
    for cut, per_prompt in scores_by_cut.items():
        aucs = [a for a in (roc_auc(s, y) for s, y in zip(per_prompt, labels)) if a is not None]
        picks = [float(y[top_pick(s)]) for s, y in zip(per_prompt, labels)]
        auc, auc_se = mean_se(aucs)
        acc, acc_se = mean_se(picks)
        out[str(cut)] = dict(auc=auc, auc_se=auc_se, auc_prompts=len(aucs), pick_accuracy=acc, pick_se=acc_se)
    return out


# -- the study -------------------------------------------------------------------------------
def run_study(model: str, count: int, n: int, max_tokens: int, seed: int, threads: int, probes: dict) -> dict:
    prompts = arithmetic_prompts(count, seed)
    with SpecRej(model, reward="logprob", n_threads=threads) as s:
        t = time.perf_counter()
        answers = generate_answers(s, prompts, n, max_tokens, seed)
        generate_s = time.perf_counter() - t
        labels = [[c["right"] for c in cands] for cands in answers]
        rewards = {}
        for name, question in [("logprob", None)] + list(probes.items()):
            t = time.perf_counter()
            got = (score_logprob(s, prompts, answers, threads) if question is None
                   else score_probe(s, question, prompts, answers, threads))
            got["score_s"] = time.perf_counter() - t
            got["cuts"] = summarize(got.pop("scores"), labels)
            rewards[name] = got
    lengths = [len(c["tokens"]) for cands in answers for c in cands]
    shares = [sum(y) / len(y) for y in labels]
    return dict(
        settings=dict(model=model, prompts=count, n=n, max_tokens=max_tokens, seed=seed, threads=threads,
                      method="bon", sampling="defaults (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05)",
                      cuts=list(CUTS)),
        machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                     usable_cpus=usable_cpus()),
        answers=dict(count=len(lengths), mean_tokens=float(np.mean(lengths)), right_share=float(np.mean(shares)),
                     random_pick_accuracy=float(np.mean(shares)),
                     any_right_share=float(np.mean([any(y) for y in labels])),
                     prompts_with_both=sum(0 < sum(y) < len(y) for y in labels), generate_s=generate_s),
        rewards=rewards,
        prompts=[dict(prompt=p, answer=a, right=sum(y)) for (p, a), y in zip(prompts, labels)],
    )


def table(study: dict) -> str:
    """The figures as a Markdown table."""
    mean_tokens = study["answers"]["mean_tokens"]
    head = ["reward", "probe tokens", "/ answer tokens"] + [f"AUC {c:.0%}" for c in CUTS] + \
           [f"Bo{study['settings']['n']} {c:.0%}" for c in CUTS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(x, se):
        return "n/a" if x is None else f"{x:.3f}" + (f" ± {se:.3f}" if se is not None else "")

    for name, r in study["rewards"].items():
        cuts = [r["cuts"][str(c)] for c in CUTS]
        cells = [name, str(r["probe_tokens"]), f"{r['probe_tokens'] / max(mean_tokens, 1e-9):.2f}"]
        cells += [fmt(c["auc"], c["auc_se"]) for c in cuts] + [fmt(c["pick_accuracy"], c["pick_se"]) for c in cuts]
        lines.append("| " + " | ".join(cells) + " |")
    a = study["answers"]
    lines.append("")
    lines.append(f"{a['count']} answers, {a['mean_tokens']:.1f} tokens on average; right: {a['right_share']:.3f} "
                 f"(a random pick); prompts with a right answer: {a['any_right_share']:.3f}; "
                 f"prompts with right and wrong answers (AUC averaged over these): {a['prompts_with_both']}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="generator (alias or .gguf path)")
    ap.add_argument("--prompts", type=int, default=40, help="arithmetic prompts")
    ap.add_argument("-n", type=int, default=16, help="answers per prompt")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0, help="seed of the prompt set and of sampling")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probes", default=",".join(PROBES), help="self-judge probes to score with, by name")
    ap.add_argument("--out", default="experiments/rewards.json")
    args = ap.parse_args(argv)
    probes = {k: PROBES[k] for k in args.probes.split(",") if k}
    study = run_study(args.model, args.prompts, args.n, args.max_tokens, args.seed, args.threads, probes)
    with open(args.out, "w") as f:
        json.dump(study, f, indent=1)
    print(table(study))


if __name__ == "__main__":
    main()
