"""Rewards of the RL stage and their audit: the rubric rule score of the evaluation on the <SOLUTION> part, a
format reward for the <REASONING> / <SOLUTION> structure, and a label reward for the answer's type statement.

Why a label reward: most answers open with a type statement ("This wafer map shows a scratch defect pattern.")
whatever the question, but only the type and morphology rubrics check it. Without it, a sampled answer with the
wrong type and a better description earns a positive advantage on a spatial or consistency question, and GSPO's
sequence-level update reinforces the wrong type with it. The label reward scores the statement against the
training wafer's own labels (known, so the reward is verifiable) and is neutral when the answer states no type.

All three have TRL's reward-function signature (prompts, completions, **dataset columns) -> list of floats, so
`GRPOTrainer(reward_funcs=[...])` calls them directly. The rule score is `scoring.rule_score`, the one
implementation stage 07 reports. Before training, `audit` scores constant, random and reference answers and the
SFT model's samples with every reward, and `check_audit` refuses a reward that cannot teach: constant across all
of them, or saturated (the SFT samples already score the maximum).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..corpus.rubric import rubric_of
from ..corpus.scoring import RuleParams, rule_score
from ..evaluation.answers import solution_text, stated_labels

_FORMAT = re.compile(r"^\s*<REASONING>(?P<r>.+?)</REASONING>\s*<SOLUTION>(?P<s>.+?)</SOLUTION>\s*$", re.S)


def completion_text(completion) -> str:
    """The text of one TRL completion: a string, or a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content", "")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [c.get("text", "") for c in content if c.get("type") == "text"]
    return "".join(parts)


def format_score(text: str) -> float:
    """1 for exactly one non-empty <REASONING> block followed by one non-empty <SOLUTION> block and nothing
    else; 0.5 for a non-empty closed <SOLUTION> block with anything else wrong; 0 otherwise."""
    m = _FORMAT.match(text or "")
    if m and m.group("r").strip() and m.group("s").strip() and text.count("<SOLUTION>") == 1 \
            and text.count("<REASONING>") == 1:
        return 1.0
    s = re.search(r"<SOLUTION>(.+?)</SOLUTION>", text or "", re.S)
    return 0.5 if s and s.group(1).strip() else 0.0


def rubric_score(text: str, rubric, params: RuleParams = RuleParams(), solution_only: bool = True) -> float:
    """The rule score S of an answer against its rubric, on its <SOLUTION> part (the whole answer if untagged)."""
    return rule_score(solution_text(text) if solution_only else text, rubric_of(rubric), params)["S"]


class RubricReward:
    """TRL reward function: the rule score of each completion against the row's rubric."""

    def __init__(self, params: RuleParams = RuleParams(), solution_only: bool = True):
        self.params, self.solution_only = params, solution_only
        self.__name__ = "rubric"  # TRL names the logged reward after the function

    def __call__(self, prompts=None, completions=None, rubric=None, **kwargs) -> list[float]:
        if rubric is None:
            raise ValueError("the rubric reward needs the dataset column 'rubric' (run stage 04's GRPO export)")
        return [rubric_score(completion_text(c), r, self.params, self.solution_only)
                for c, r in zip(completions, rubric)]


def label_score(text: str, labels) -> float:
    """The answer's type statement against the wafer's labels: 1 when it states exactly the labels, the
    Jaccard overlap when it states some of them (hedging "center and scratch" on a Center wafer: 0.5), 0 when
    it states only wrong ones, and a neutral 0.5 when it states no type at all."""
    stated, truth = set(stated_labels(text)), {str(x) for x in labels}
    if not truth:
        raise ValueError("label reward: a row without labels (expected the wafer's label list)")
    if not stated:
        return 0.5
    return len(stated & truth) / len(stated | truth)


def label_reward(prompts=None, completions=None, labels=None, **kwargs) -> list[float]:
    """TRL reward function: :func:`label_score` of each completion against the row's `labels` column."""
    if labels is None:
        raise ValueError("the label reward needs the dataset column 'labels' (the wafer's labels)")
    return [label_score(completion_text(c), lab) for c, lab in zip(completions, labels)]


label_reward.__name__ = "label"


def format_reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """TRL reward function: the <REASONING> / <SOLUTION> structure (see `format_score`)."""
    return [format_score(completion_text(c)) for c in completions]


format_reward.__name__ = "format"


def constant_answers(question: str) -> dict[str, str]:
    """The constant answers every reward must not favour: empty, two pattern words, the question copied."""
    return {"empty": "", "center": "center", "edge ring": "edge ring", "question copied": question}


def random_answer(answers: list[str], rng: np.random.Generator) -> str:
    """A reference answer of another row (fluent, well formatted, about some other wafer)."""
    return answers[int(rng.integers(len(answers)))]


def audit(rows: pd.DataFrame, rewards: dict, samples: dict[str, list[str]] | None = None, seed: int = 0,
          tagged: bool = True) -> pd.DataFrame:
    """Mean, spread and share at the maximum of every reward on constant, random, reference and sampled
    answers. rows: the RL prompts (question, answer, terms, reasoning_answer); rewards: name -> TRL reward
    function; samples: name -> one answer per row (e.g. the SFT model's). With `tagged`, constant and random
    answers are wrapped in the <REASONING>/<SOLUTION> tags so that the format reward alone does not tell them
    apart from the reference."""
    rng = np.random.default_rng(seed)
    refs = list(rows["reasoning_answer"] if tagged else rows["answer"])
    wrap = (lambda a: f"<REASONING>{a}</REASONING>\n<SOLUTION>{a}</SOLUTION>") if tagged else (lambda a: a)
    kinds: dict[str, list[str]] = {}
    for name in constant_answers(""):
        kinds[f"constant: {name}"] = [wrap(constant_answers(q)[name]) for q in rows["question"]]
    kinds["random (another row's reference)"] = [random_answer(refs, rng) for _ in range(len(rows))]
    kinds["reference"] = refs
    for name, answers in (samples or {}).items():
        if len(answers) != len(rows):
            raise ValueError(f"audit samples {name!r}: {len(answers)} answers for {len(rows)} rows")
        kinds[name] = list(answers)
    out = []
    for kind, answers in kinds.items():
        scores = score_answers(rows, answers, rewards)
        for rname in rewards:
            v = scores[rname].to_numpy()
            out.append({"answers": kind, "reward": rname, "mean": v.mean(), "std": v.std(), "min": v.min(),
                        "max": v.max(), "share_at_max": float(np.mean(v >= 1.0 - 1e-9))})
    return pd.DataFrame(out)


def score_answers(rows: pd.DataFrame, answers: list[str], rewards: dict) -> pd.DataFrame:
    """Every reward (name -> TRL reward function) on one answer per row, as the trainer calls them: a column
    per reward, indexed like `rows` (which hold the rubric `terms` and, for the label reward, `labels`)."""
    if len(answers) != len(rows):
        raise ValueError(f"score_answers: {len(answers)} answers for {len(rows)} rows")
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    labels = [list(x) for x in rows["labels"]] if "labels" in rows else None
    return pd.DataFrame({name: np.asarray(fn(prompts=None, completions=completions, rubric=list(rows["terms"]),
                                             labels=labels), dtype=float) for name, fn in rewards.items()},
                        index=rows.index)


def check_audit(table: pd.DataFrame, sampled: str, saturation: float = 0.9) -> None:
    """Refuse to train on a reward that cannot teach: one whose value is the same for every answer kind and
    row (constant), or on which `saturation` or more of the model's own samples (`sampled`) already score the
    maximum (saturated). Raises ValueError naming the reward and the evidence."""
    problems = []
    for rname, t in table.groupby("reward"):
        lo, hi = t["min"].min(), t["max"].max()
        if hi - lo < 1e-9:
            problems.append(f"reward {rname!r} is constant ({lo:.3f}) on every audited answer")
        s = t[t["answers"] == sampled]
        if s.empty:
            raise ValueError(f"audit table has no rows for the sampled answers {sampled!r}")
        if s["share_at_max"].iloc[0] >= saturation:
            problems.append(f"reward {rname!r} is saturated: {s['share_at_max'].iloc[0]:.0%} of the {sampled} "
                            f"samples already score the maximum (limit {saturation:.0%})")
    if problems:
        raise ValueError("reward audit failed, RL would learn nothing: " + "; ".join(problems))
