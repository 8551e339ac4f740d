"""A known population and biased samples from it, as `SurveyFrames`, for the survey statistics tests.

The population has independent margins (`POP`); selection into the sample multiplies
per-margin factors (`SELECT`), which is the case raking corrects exactly. Answers to
``pr-warn`` depend strongly on age and education (`agree_prob`), so the unweighted
share is biased and raking removes most of its variance; value ratings follow latent
value importances, and scenario choices follow stated values with strength ``k``
(k=0: random choices).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from valign.survey.frames import ANSWER_COLUMNS, SurveyFrames
from valign.survey.instrument import load_instrument
from valign.survey.margins import Margins, margins_from_dict

INSTRUMENT = load_instrument("demo")
POP = {
    "age_group": {"18-29": 0.20, "30-44": 0.25, "45-64": 0.33, "65+": 0.22},
    "sex": {"female": 0.51, "male": 0.49},
    "education": {"school": 0.40, "post_school": 0.30, "degree": 0.30},
}
SELECT = {
    "age_group": {"18-29": 2.5, "30-44": 1.5, "45-64": 1.0, "65+": 0.4},
    "sex": {"female": 1.6, "male": 1.0},
    "education": {"school": 0.6, "post_school": 1.0, "degree": 3.0},
}
AGE_EFFECT = {"18-29": 1.6, "30-44": 0.6, "45-64": -0.6, "65+": -1.8}
EDU_EFFECT = {"school": -0.9, "post_school": 0.0, "degree": 1.2}
SEX_EFFECT = {"female": 0.3, "male": -0.3}


def margins() -> Margins:
    return margins_from_dict({"id": "sim", "source": {"citation": "simulated population"}, "variables": {k: {"categories": v} for k, v in POP.items()}})


def agree_prob(age: str, sex: str, edu: str) -> float:
    """P(agree with pr-warn | cell); disagree and pass split the rest 2:1."""
    return float(1 / (1 + np.exp(-(AGE_EFFECT[age] + EDU_EFFECT[edu] + SEX_EFFECT[sex]))))


def truth_agree() -> float:
    """The population share agreeing with pr-warn."""
    return sum(
        POP["age_group"][a] * POP["sex"][s] * POP["education"][e] * agree_prob(a, s, e)
        for a, s, e in itertools.product(POP["age_group"], POP["sex"], POP["education"])
    )


def simulate(n: int, seed: int, *, k: float = 3.0, biased: bool = True) -> SurveyFrames:
    """A sample of n respondents with demographics, values, principle and scenario answers."""
    rng = np.random.default_rng(seed)
    cells = list(itertools.product(POP["age_group"], POP["sex"], POP["education"]))
    p = np.array([POP["age_group"][a] * POP["sex"][s] * POP["education"][e] for a, s, e in cells])
    if biased:
        p = p * np.array([SELECT["age_group"][a] * SELECT["sex"][s] * SELECT["education"][e] for a, s, e in cells])
    draw = rng.choice(len(cells), size=n, p=p / p.sum())
    ids = pd.Index([f"r{i:05d}" for i in range(n)], name="respondent_id")
    age = np.array([cells[c][0] for c in draw], dtype=object)
    sex = np.array([cells[c][1] for c in draw], dtype=object)
    edu = np.array([cells[c][2] for c in draw], dtype=object)
    resp = pd.DataFrame(
        {"age_group": age, "sex": sex, "education": edu, "completed": True, "synthetic": True, "exclude": False, "quality_factor": 1.0},
        index=ids,
    )
    rows: list[tuple[str, str, str, str]] = []

    # principle pr-warn: known per-cell distribution
    pa = np.array([agree_prob(a, s, e) for a, s, e in zip(age, sex, edu)])
    u = rng.random(n)
    warn = np.where(u < pa, "agree", np.where(u < pa + (1 - pa) * 2 / 3, "disagree", "pass"))
    rows += [(i, "pr-warn", "principle", c) for i, c in zip(ids, warn)]

    # values: latent importance per value, ratings on the 6-point scale
    section = INSTRUMENT.values
    values = list(dict.fromkeys(v.value for v in section.items))
    latent = rng.normal(0, 1.0, size=(n, len(values))) + (age == "65+")[:, None] * np.where(np.array(values) == "tradition", 1.0, 0.0)
    level = rng.normal(0, 0.5, size=(n, 1))  # scale use differs between people; centring removes it
    for item in section.items:
        j = values.index(item.value)
        x = np.clip(np.rint(3.5 + level[:, 0] + latent[:, j] + rng.normal(0, 0.5, n)), 1, 6).astype(int)
        if item.reverse:
            x = 7 - x
        rows += [(i, item.id, "value", str(v)) for i, v in zip(ids, x)]

    # scenarios: choices follow stated (latent) values with strength k
    for sc in INSTRUMENT.scenarios.items:
        sa = latent[:, [values.index(v) for v in sc.answers[0].values]].mean(axis=1)
        sb = latent[:, [values.index(v) for v in sc.answers[1].values]].mean(axis=1)
        pa_choice = 1 / (1 + np.exp(-k * (sa - sb)))
        pick = np.where(rng.random(n) < pa_choice, sc.answers[0].id, sc.answers[1].id)
        rows += [(i, sc.id, "scenario", c) for i, c in zip(ids, pick)]

    answers = pd.DataFrame(rows, columns=["respondent_id", "item_id", "kind", "choice"]).reindex(columns=ANSWER_COLUMNS)
    return SurveyFrames(INSTRUMENT, resp, answers)
