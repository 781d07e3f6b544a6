"""A run folder's result files, and what its ``metrics.json`` vouches for, checked wherever it is read.

``adbench.evaluation.evaluate.evaluate_run`` writes ``scores.csv`` (``write_scores``) and ``maps.npz``
(``adbench.methods.runs.write_maps``), then ``metrics.json`` with their SHA-256 digests (``file_digests``:
``scores_sha256``, ``maps_sha256``).  Every reader that turns a ``metrics.json`` into a table, a figure, a
significance test, a category summary or an MLflow run loads it through ``read_metrics``, which refuses a
run folder, naming its ``metrics.json`` and what is wrong, when

* the ``metrics.json`` records no digests (written before they existed, or edited to drop them);
* ``scores.csv`` or ``maps.npz`` is missing, or its SHA-256 differs from the recorded one (hand-edited,
  replaced, or copied from another run after the fact);
* its ``image_auroc`` differs from the AUROC recomputed from ``scores.csv`` (``adbench.evaluation.metrics.roc_auc``,
  the function ``evaluate_run`` used) by more than ``AUROC_TOLERANCE`` = 1e-12.  Both come from the same
  float64 scores (``scores.csv`` stores each as its shortest round-trip decimal, so it reads back bit for
  bit) through the same code, so they agree exactly; the tolerance admits only floating-point summation
  noise, nine orders of magnitude below the 1e-3 a table prints;
* the scores in ``scores.csv`` are constant: a degenerate cell, whose AUROC of exactly 0.5 is no result
  (``evaluate_run`` never writes one: ``adbench.protocol.CollapseError``).

The fix is always the same: rerun the cell (``snakemake --force <its metrics.json>``, or delete its run
folder), then the tables.  Light on imports (no torch, no pandas): the workflow's table jobs call it.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

#: The digests ``metrics.json`` records: field -> the file of the run folder it covers.
DIGESTS: dict[str, str] = {"scores_sha256": "scores.csv", "maps_sha256": "maps.npz"}
#: Largest accepted |metrics.json image_auroc - AUROC recomputed from scores.csv| (floating-point summation
#: noise only; see the module docstring).
AUROC_TOLERANCE = 1e-12
_CHUNK = 1 << 20  # bytes read at a time while hashing


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB chunks (a paper-size maps.npz is tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: str | Path) -> dict[str, str]:
    """``{"scores_sha256": ..., "maps_sha256": ...}`` of ``folder``'s scores.csv and maps.npz, for
    ``metrics.json`` (``evaluate_run`` writes both files first)."""
    return {field: sha256_of(Path(folder) / name) for field, name in DIGESTS.items()}


def write_scores(path: str | Path, ids: list[str], labels: Iterable[int], defect_types: list[str],
                 scores: np.ndarray) -> None:
    """``scores.csv``: columns id, label, defect_type, score, one row per test image in split order; scores
    (N,) as float64 in their shortest round-trip repr, so ``read_scores`` gets the same bits back.  Written
    with the csv module: importing pandas here would add a second to each of the workflow's ~120 jobs."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "label", "defect_type", "score"])
        for row in zip(ids, list(labels), defect_types, np.asarray(scores, np.float64).tolist()):
            writer.writerow(row)


def read_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (N,) int64, scores (N,) float64)`` of a ``scores.csv`` written by ``write_scores``.

    Raises:
        ValueError: naming the file, when it has no label / score columns or a value is not a number.
    """
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"label", "score"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path} has no rows with {sorted(missing)} (not written by "
                         f"adbench.evaluation.evaluate.evaluate_run?): rerun the cell")
    try:
        labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        scores = np.array([float(r["score"]) for r in rows], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} holds a label or score that is not a number ({err}): rerun the cell") from None
    return labels, scores


class TamperedRunError(ValueError):
    """Run folders whose files disagree with what their ``metrics.json`` recorded (see the module docstring).

    Attributes:
        problems: ``{metrics.json path: [what is wrong, ...]}``, every refused file.
    """

    def __init__(self, problems: dict[str, list[str]]) -> None:
        self.problems = problems
        listing = "\n".join(f"  {path}: " + "; ".join(found) for path, found in problems.items())
        rerun = " ".join(problems)
        super().__init__(
            f"{len(problems)} run folder(s) do not hold the results their metrics.json records, so their numbers "
            f"cannot be reported:\n{listing}\n"
            f"rerun those cells (`snakemake --force {rerun}`, or delete their run folders), then the tables; do "
            f"not edit metrics.json, scores.csv or maps.npz by hand")


def run_problems(metrics_path: str | Path, record: dict[str, Any]) -> list[str]:
    """What is wrong with the run folder of ``metrics_path`` (``record``: its parsed content); empty when
    its digests, its image AUROC and its scores all check out (module docstring)."""
    from adbench.evaluation.metrics import roc_auc  # scipy: only when a table is built

    folder = Path(metrics_path).parent
    problems = []
    recorded = {field: record.get(field) for field in DIGESTS}
    if None in recorded.values():
        problems.append(f"it records no {' / '.join(k for k, v in recorded.items() if v is None)} (SHA-256 of "
                        f"{' / '.join(DIGESTS[k] for k, v in recorded.items() if v is None)}): written before "
                        f"metrics.json carried digests, or edited")
    for field, name in DIGESTS.items():
        path = folder / name
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        actual = sha256_of(path) if recorded[field] is not None else None
        if actual != recorded[field]:
            problems.append(f"{path} has SHA-256 {actual[:16]}..., metrics.json recorded "
                            f"{str(recorded[field])[:16]}...: it was changed after the run")
    scores_path = folder / DIGESTS["scores_sha256"]
    if scores_path.exists():
        try:
            labels, scores = read_scores(scores_path)
        except ValueError as err:  # unreadable: say so beside the other problems
            return problems + [str(err)]
        stated = record.get("image_auroc")
        if len(scores) and scores.min() == scores.max():
            problems.append(f"every score in {scores_path} is {float(scores[0])!r}: a degenerate (collapsed) cell, not "
                            f"an AUROC")
        elif not isinstance(stated, (int, float)) or isinstance(stated, bool):
            problems.append(f"its image_auroc is {stated!r}, not a number")
        else:
            try:
                recomputed = roc_auc(labels, scores)
            except ValueError as err:  # NaN scores, one class only
                return problems + [f"the scores in {scores_path} give no AUROC ({err})"]
            if not abs(float(stated) - recomputed) <= AUROC_TOLERANCE:
                problems.append(f"its image_auroc {float(stated)!r} is not the AUROC of the scores in "
                                f"{scores_path}, {recomputed!r} (they may differ by {AUROC_TOLERANCE:g}, "
                                f"floating-point summation noise, at most)")
    return problems


def read_metrics(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The parsed ``metrics.json`` of each path, in order, after checking each run folder (``run_problems``).

    Raises:
        TamperedRunError: listing every refused ``metrics.json`` with what is wrong and how to rerun it.
    """
    records, problems = [], {}
    for path in paths:
        record = json.loads(Path(path).read_text())
        found = run_problems(path, record)
        if found:
            problems[str(path)] = found
        records.append(record)
    if problems:
        raise TamperedRunError(problems)
    return records
