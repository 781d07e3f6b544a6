"""Result files of small fake run folders, written by the suite's own writers, for the table and MLflow tests.

Imported as ``from run_folders import ...`` (pytest puts this directory on ``sys.path``).  Real run folders
(``fit_run`` + ``evaluate_run``) are made in tests/test_tamper_evidence.py and tests/test_degenerate_outputs.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from adbench.evaluation.integrity import file_digests, write_scores
from adbench.evaluation.metrics import roc_auc
from adbench.methods.runs import write_maps


def scores_for_auroc(auroc: float, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (2n,), scores (2n,))``: n normal images scored 0 .. n-1 and n anomalous ones at half-integers
    placed so that their image AUROC is ``auroc`` rounded to a multiple of 1 / n² (no ties, never constant)."""
    pairs = int(round(auroc * n * n))
    if not 0 <= pairs <= n * n:
        raise ValueError(f"auroc {auroc} is not in [0, 1]")
    above = [pairs // n + (i < pairs % n) for i in range(n)]  # normal scores each anomalous one beats
    labels = np.r_[np.zeros(n, np.int64), np.ones(n, np.int64)]
    scores = np.r_[np.arange(n, dtype=np.float64), np.asarray(above, np.float64) - 0.5]
    return labels, scores


def write_result_files(folder: Path, auroc: float, n: int = 10, size: int = 8, seed: int = 0) -> dict:
    """``scores.csv`` and ``maps.npz`` of 2n test images (``scores_for_auroc``; random (size, size) maps) in
    ``folder``, as ``evaluate_run`` writes them; returns the fields it then puts in metrics.json:
    ``image_auroc`` (recomputed from the scores), ``scores_sha256`` and ``maps_sha256``."""
    folder.mkdir(parents=True, exist_ok=True)
    labels, scores = scores_for_auroc(auroc, n)
    ids = [f"test/{'scratch' if label else 'good'}/{i:03d}" for i, label in enumerate(labels)]
    write_scores(folder / "scores.csv", ids, labels.tolist(), ["scratch" if l else "good" for l in labels], scores)
    maps = np.random.default_rng(seed).random((len(ids), size, size)).astype(np.float32)
    write_maps(folder / "maps.npz", maps, ids)
    return {"image_auroc": roc_auc(labels, scores), **file_digests(folder)}
