"""Temperature scaling and calibration error for the graders' three-class probabilities.

A grader's softmax output ``p`` is recalibrated as ``softmax(log p / T)``: one scalar T per
model, fitted on predictions of studies the model did not train on (the inner validation
split), by minimizing the official metric's group term (log loss weighted 1/2/4). T > 1
softens over-confident predictions, T < 1 sharpens timid ones; the argmax, and so recall
and F1, never change. T = 1 is always among the candidates, so the fitted T never raises
the loss on the data it was fitted on.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from spinegrade.core import vocab
from spinegrade.core.errors import DataError
from spinegrade.scoring.metrics import weighted_log_loss

LOG_FLOOR = 1e-12  # probabilities below this are floored before the log (softmax outputs
# of float32 logits can underflow to 0; 1e-12 is far below anything the metric rewards)
T_RANGE = (0.05, 20.0)  # searched on a log scale


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """(N, 3) probabilities -> softmax(log p / T), rows summing to 1 (float64)."""
    if not temperature > 0:
        raise DataError(f"temperature must be > 0, got {temperature!r}")
    logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), LOG_FLOOR, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def metric_weights(labels: np.ndarray) -> np.ndarray:
    """Sample weights of the official metric (1/2/4 by true class)."""
    return np.asarray(vocab.SEVERITY_WEIGHTS, dtype=np.float64)[np.asarray(labels, dtype=int)]


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    """The T minimizing the metric's weighted log loss of ``softmax(log p / T)``.

    Args:
        proba: (N, 3) probabilities of N labelled crops the model did not train on.
        labels: (N,) class indices.

    Returns:
        T in ``T_RANGE``; exactly 1.0 when no T does better than leaving ``proba`` alone.
    """
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        raise DataError("cannot fit a temperature on no predictions")
    weights = metric_weights(labels)

    def loss(log_t: float) -> float:
        return weighted_log_loss(labels, apply_temperature(proba, float(np.exp(log_t))), weights)

    best = minimize_scalar(
        loss, bounds=tuple(np.log(T_RANGE)), method="bounded", options={"xatol": 1e-4}
    )
    return float(np.exp(best.x)) if best.fun < loss(0.0) else 1.0


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE: the crop-weighted mean |accuracy - confidence| over equal-width bins
    of the predicted class's probability."""
    table = reliability_table(proba, labels, bins)
    n = table["count"].sum()
    return float(np.sum(table["count"] * np.abs(table["accuracy"] - table["confidence"])) / n)


def reliability_table(proba: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Per non-empty confidence bin: mean confidence, accuracy and crop count (the points of
    a reliability diagram; a calibrated model lies on the diagonal)."""
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    if len(y) == 0:
        raise DataError("no predictions to measure calibration on")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    out: dict = {"bin": [], "confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        members = which == b
        if members.any():
            out["bin"].append(b)
            out["confidence"].append(float(conf[members].mean()))
            out["accuracy"].append(float(correct[members].mean()))
            out["count"].append(int(members.sum()))
    return {k: np.asarray(v) for k, v in out.items()}
