"""Latent degeneration per level, and the grades read from it.

Each study draws one continuous latent degree per (condition group, side, level), in units
of its standard deviation:

    z[g, side, k] = LEVEL_MEAN[g][k] + sqrt(STUDY_VAR) * S + sqrt(LEVEL_VAR) * D[k]
                    + sqrt(OWN_VAR) * E[g, side, k]

S (the study's overall degeneration) and D[k] (the disc at level k) are shared by every
condition, so canal, recesses and foramina of one level narrow together when its disc
degenerates, and a degenerate study is degenerate at several levels. E is the condition's
own part. Every z is N(LEVEL_MEAN[g][k], 1).

The true grade is z cut at two thresholds per group (``thresholds``), chosen analytically
so that the grade frequencies averaged over the five levels equal CLASS_BALANCE: no label
is ever flipped at random. The anatomy shows z continuously (``narrowing``), so a level
just below a threshold looks almost like one just above it. The recorded label is the grade
of z plus a reader's error N(0, reader_sd): it differs from the true grade only near a
threshold, as graders disagree on borderline cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, ndtr

# Real class balance per group (docs/rsna-data.md), Normal/Mild, Moderate, Severe.
CLASS_BALANCE = {
    "spinal": (8664, 736, 470),
    "foraminal": (15357, 3564, 779),
    "subarticular": (13733, 3660, 1840),
}

# Mean latent per level L1/L2 .. L5/S1: degeneration peaks at L4/L5 (foraminal at L5/S1).
LEVEL_MEAN = {
    "spinal": (-0.9, -0.55, -0.1, 0.55, 0.0),
    "foraminal": (-1.0, -0.6, -0.1, 0.4, 0.55),
    "subarticular": (-0.8, -0.45, 0.0, 0.5, 0.25),
}

# Variance components of the latent (they sum to 1).
STUDY_VAR = 0.3
LEVEL_VAR = 0.45
OWN_VAR = 0.25

# Slope of the latent -> narrowing sigmoid, per unit of (z - t1) / (t2 - t1).
NARROWING_SLOPE = 1.6


@cache
def thresholds(group: str) -> tuple[float, float]:
    """(t1, t2): the latent cut-offs Normal/Mild|Moderate and Moderate|Severe of ``group``.

    Solves mean_k P(z_k >= t) = target for z_k ~ N(LEVEL_MEAN[group][k], 1), so the grades
    averaged over levels follow CLASS_BALANCE[group] exactly.
    """
    counts = np.asarray(CLASS_BALANCE[group], dtype=float)
    p = counts / counts.sum()
    mu = np.asarray(LEVEL_MEAN[group])

    def cut(tail: float) -> float:
        return brentq(lambda t: float(np.mean(ndtr(mu - t))) - tail, -10.0, 10.0)

    return cut(p[1] + p[2]), cut(p[2])


def grade(z: np.ndarray | float, group: str) -> np.ndarray:
    """Grade 0/1/2 (Normal/Mild, Moderate, Severe) of latent ``z`` (any shape)."""
    t1, t2 = thresholds(group)
    z = np.asarray(z)
    return (z >= t1).astype(np.int64) + (z >= t2)


def narrowing(z: np.ndarray | float, group: str) -> np.ndarray:
    """Narrowing in (0, 1), strictly increasing in ``z``: about 0.3 at the Moderate
    threshold, 0.7 at the Severe one, 0.02 for a typical normal level."""
    t1, t2 = thresholds(group)
    h = (np.asarray(z, dtype=float) - t1) / (t2 - t1)
    return expit(NARROWING_SLOPE * (h - 0.5))


@dataclass(frozen=True)
class Degeneration:
    """One study's latent degrees (units of their sd).

    Attributes:
        spinal: (5,) per level.
        foraminal: (2, 5) per side (0 = left) and level.
        subarticular: (2, 5) per side and level.
        disc: (5,) the shared part (study + disc factor), which drives disc height and
            nucleus signal.
    """

    spinal: np.ndarray
    foraminal: np.ndarray
    subarticular: np.ndarray
    disc: np.ndarray

    def of(self, group: str) -> np.ndarray:
        """(sides, 5) latent of ``group`` (sides = 1 for spinal)."""
        z = getattr(self, group)
        return z[None] if z.ndim == 1 else z


def draw_degeneration(rng: np.random.Generator) -> Degeneration:
    """Draw the latent degrees of one study (see the module docstring)."""
    shared = np.sqrt(STUDY_VAR) * rng.standard_normal() + np.sqrt(LEVEL_VAR) * rng.standard_normal(
        5
    )

    def own(group: str, sides: int) -> np.ndarray:
        e = np.sqrt(OWN_VAR) * rng.standard_normal((sides, 5))
        return np.asarray(LEVEL_MEAN[group]) + shared + e

    return Degeneration(
        spinal=own("spinal", 1)[0],
        foraminal=own("foraminal", 2),
        subarticular=own("subarticular", 2),
        disc=shared + np.mean([LEVEL_MEAN[g] for g in LEVEL_MEAN], axis=0),
    )


def read_grades(
    rng: np.random.Generator, degeneration: Degeneration, group: str, reader_sd: float
) -> np.ndarray:
    """(sides, 5) recorded grades: the grade of z + N(0, reader_sd) per cell."""
    z = degeneration.of(group)
    return grade(z + reader_sd * rng.standard_normal(z.shape), group)
