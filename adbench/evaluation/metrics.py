"""Image- and pixel-level anomaly-detection metrics, in plain numpy.

Every metric is computed exactly from one sort of the scores (no threshold grid).  Tied scores form a
single threshold step, as in scikit-learn, and a sample is predicted anomalous iff ``score >= t``.

Image level (``labels``/``scores``: (N,) arrays, label 1 = anomalous):
    ``roc_auc``, ``average_precision``, ``f1_max``.
Pixel level (``masks``: (N, H, W) in {0, 1}, ``maps``: (N, H, W) float anomaly maps):
    the same three over all pixels flattened, plus ``aupro``, MVTec AD's area under the
    per-region-overlap curve up to a false-positive rate of 0.3, normalised to [0, 1].
``evaluate`` returns all seven numbers in one dict; ``per_defect`` the image and pixel AUROC of each defect
type and kind against the normal images.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["roc_auc", "average_precision", "f1_max", "aupro", "image_metrics", "pixel_metrics", "evaluate", "per_defect"]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def check_binary(labels, name: str) -> np.ndarray:
    """``labels`` as a bool array; ValueError naming ``name`` when a value is not 0 or 1."""
    labels = np.asarray(labels)
    if labels.size and np.any((labels != 0) & (labels != 1)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return labels.astype(bool)


def check_scores(scores, name: str) -> np.ndarray:
    """``scores`` as float64; ValueError naming ``name`` when one is NaN or infinite."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return scores


def _sort_desc(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order (descending) of ``scores`` and the index of the last element of each tie group in it.

    A stable sort: numpy's default quicksort runs x86-simd-sort's vector kernels, whose order within a tie
    group depends on the instruction set (the counts do not), and whose AVX2 argsort crashed QEMU's
    emulated Haswell CPU in tests/test_emulated_cpus.py; the stable sort is scalar and the same everywhere.
    """
    return _ranked(scores, np.argsort(scores, kind="stable")[::-1])


def _ranked(scores: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``order`` and the index of the last element of each tie group of ``scores`` in it."""
    ranked = scores[order]
    return order, np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), ranked.size - 1)


def _subset_order(order: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The order ``_sort_desc`` gives ``scores[keep]``, from ``order``, the one of all ``scores``.

    order: (N,) from ``_sort_desc(scores)``; keep: (N,) bool.  Returns (keep.sum(),) indices into
    ``scores[keep]``.  A stable sort orders a tie group by position, and ``keep`` preserves the positions'
    order, so filtering the full order (O(N)) gives the subset's own sort exactly, element for element.
    """
    position = np.cumsum(keep) - 1
    return position[order[keep[order]]]


def _counts(labels, scores, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives) at each distinct threshold, highest threshold first.

    labels, scores: (N,) arrays.  Returns two (T,) int64 arrays, T = number of distinct scores; entry i
    counts the samples with ``score >= `` the i-th largest distinct score.  ``order``: the scores'
    ``_sort_desc`` order when the caller has it (else it is computed).
    """
    labels = check_binary(labels, "labels")
    scores = check_scores(scores, "scores")
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length, got {labels.shape} and {scores.shape}")
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError("only one class is present in labels; the metric needs both normal (0) and anomalous (1)")
    order, ends = _sort_desc(scores) if order is None else _ranked(scores, order)
    tps = np.cumsum(labels[order], dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return fps, tps


def _roc_auc(fps: np.ndarray, tps: np.ndarray) -> float:
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    return float(np.trapezoid(tpr, fpr))


def _average_precision(fps: np.ndarray, tps: np.ndarray) -> float:
    recall_steps = np.diff(np.concatenate([[0], tps])) / tps[-1]
    return float(np.sum(recall_steps * tps / (tps + fps)))


def _f1_max(fps: np.ndarray, tps: np.ndarray) -> float:
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + P)
    return float(np.max(2 * tps / (tps + fps + tps[-1])))


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve.  labels: (N,) in {0, 1}; scores: (N,) float, higher = more anomalous."""
    return _roc_auc(*_counts(labels, scores))


def average_precision(labels, scores) -> float:
    """Average precision, sum_k (R_k - R_{k-1}) P_k over thresholds (sklearn's definition).

    labels: (N,) in {0, 1}; scores: (N,) float.
    """
    return _average_precision(*_counts(labels, scores))


def f1_max(labels, scores) -> float:
    """Best F1 over all thresholds t, predicting anomalous iff ``score >= t``.

    labels: (N,) in {0, 1}; scores: (N,) float.
    """
    return _f1_max(*_counts(labels, scores))


def aupro(masks, maps, fpr_limit: float = 0.3, order: np.ndarray | None = None) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit`` (MVTec AD definition).

    masks: (N, H, W) in {0, 1}, ground truth; maps: (N, H, W) float anomaly maps.
    Regions are the 8-connected components of each image's mask.  At threshold t, PRO is the mean over
    all regions of all images of the fraction of the region's pixels with ``score >= t``, and FPR is the
    fraction of all normal pixels with ``score >= t``.  The curve starts at (0, 0), has one point per
    distinct score, is integrated with the trapezoid rule up to ``fpr_limit`` (PRO linearly interpolated
    there) and divided by ``fpr_limit``, so a perfect map scores 1.0.  ``order``: the flattened maps'
    ``_sort_desc`` order when the caller has it.
    """
    masks = check_binary(masks, "masks")
    maps = check_scores(maps, "maps")
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(f"masks and maps must both be (N, H, W), got {masks.shape} and {maps.shape}")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")

    regions = np.zeros(masks.shape, dtype=np.int64)  # 0 = normal, k >= 1 = global region id
    n_regions = 0
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        regions[i] = np.where(labelled > 0, labelled + n_regions, 0)
        n_regions += n
    regions = regions.ravel()
    n_normal = int(np.count_nonzero(regions == 0))
    if n_regions == 0 or n_normal == 0:
        raise ValueError("aupro needs at least one anomalous region and one normal pixel in masks")

    # Each anomalous pixel adds 1 / (n_regions * its region's size) to PRO once the threshold reaches it.
    sizes = np.bincount(regions, minlength=n_regions + 1)
    weights = np.where(regions > 0, 1.0 / (n_regions * sizes[regions]), 0.0)
    order, ends = _sort_desc(maps.ravel()) if order is None else _ranked(maps.ravel(), order)
    fpr = np.concatenate([[0.0], np.cumsum(regions[order] == 0)[ends] / n_normal])
    pro = np.concatenate([[0.0], np.cumsum(weights[order])[ends]])

    # Keep the points with fpr <= limit; add the interpolated point at the limit if it falls inside a segment.
    k = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr[:k] <= limit < fpr[k:]
    x, y = fpr[:k], pro[:k]
    if x[-1] < fpr_limit:  # then k < len(fpr), since the curve ends at fpr = 1 >= limit
        y_limit = y[-1] + (pro[k] - y[-1]) * (fpr_limit - x[-1]) / (fpr[k] - x[-1])
        x, y = np.append(x, fpr_limit), np.append(y, y_limit)
    return float(np.trapezoid(y, x) / fpr_limit)


def image_metrics(labels, scores) -> dict[str, float]:
    """image_auroc, image_ap, image_f1_max.  labels: (N,) in {0, 1}; scores: (N,) float."""
    curve = _counts(labels, scores)
    return {"image_auroc": _roc_auc(*curve), "image_ap": _average_precision(*curve), "image_f1_max": _f1_max(*curve)}


def pixel_metrics(masks, maps, fpr_limit: float = 0.3) -> dict[str, float]:
    """pixel_auroc, pixel_ap, pixel_f1_max (all pixels flattened) and pixel_aupro.

    masks: (N, H, W) in {0, 1}; maps: (N, H, W) float.
    """
    masks, maps = np.asarray(masks), np.asarray(maps)
    order = _sort_desc(check_scores(maps.ravel(), "maps"))[0]  # one sort for the curve and the PRO curve
    curve = _counts(masks.ravel(), maps.ravel(), order)
    return {
        "pixel_auroc": _roc_auc(*curve),
        "pixel_ap": _average_precision(*curve),
        "pixel_f1_max": _f1_max(*curve),
        "pixel_aupro": aupro(masks, maps, fpr_limit, order),
    }


def evaluate(labels, scores, masks, maps) -> dict[str, float]:
    """All seven metrics: labels/scores (N,) image level, masks/maps (N, H, W) pixel level."""
    return {**image_metrics(labels, scores), **pixel_metrics(masks, maps)}


def per_defect(labels, defect_types, scores, masks, maps, kinds: dict[str, str] | None = None) -> dict:
    """Image and pixel AUROC of each defect type, and of each defect kind, against the normal images.

    labels: (N,) {0, 1}; defect_types: N names (``"good"`` for normal images); scores: (N,); masks, maps:
    (N, H, W).  A group's image AUROC ranks its anomalous images against every normal one; its pixel AUROC
    ranks the pixels of its images and of the normal images (positives: the group's mask pixels).  So one
    large defect type cannot stand in for the others, as it does in the pooled pixel AUROC, where every
    anomalous pixel of the split counts once.  ``kinds`` maps a defect type to its kind (``local``,
    ``hard_global``, ``logical``: ``adbench.data.embedded.DEFECT_KIND``); without it there are no kind groups.

    Returns ``{"defect_types": {type: {"kind", "n", "image_auroc", "pixel_auroc"}}, "defect_kinds": {kind:
    {"types", "n", "image_auroc", "pixel_auroc"}}}`` (numbers as floats, ``n`` the group's image count).
    """
    labels = check_binary(labels, "labels")
    types = np.asarray(defect_types)
    if types.shape != labels.shape:
        raise ValueError(f"{types.size} defect types for {labels.size} labels")
    if (labels != (types != "good")).any():
        raise ValueError("labels and defect types disagree: exactly the images of type 'good' must be normal")
    scores, masks, maps = np.asarray(scores), np.asarray(masks), np.asarray(maps)
    normal = ~labels
    pixel_order = _sort_desc(check_scores(maps.ravel(), "maps"))[0]  # each group's pixel order is a part of it
    pixels_per_image = maps[0].size if len(maps) else 0

    def group(members: np.ndarray) -> dict[str, float]:
        chosen = normal | members
        order = _subset_order(pixel_order, np.repeat(chosen, pixels_per_image))
        return {"n": int(members.sum()), "image_auroc": roc_auc(labels[chosen], scores[chosen]),
                "pixel_auroc": _roc_auc(*_counts(masks[chosen].ravel(), maps[chosen].ravel(), order))}

    kinds = kinds or {}
    present = sorted(set(types[labels]))
    out = {"defect_types": {t: {"kind": kinds.get(t, "unclassified"), **group(types == t)} for t in present},
           "defect_kinds": {}}
    for kind in sorted({kinds[t] for t in present if t in kinds}):
        members = [t for t in present if kinds.get(t) == kind]
        out["defect_kinds"][kind] = {"types": members, **group(np.isin(types, members))}
    return out
