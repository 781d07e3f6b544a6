"""Exact nearest-neighbour distances and greedy k-centre (farthest-point) selection, shared by the methods.

``nearest_distances`` scores test features against a memory bank (PatchCore, PatchSVDD);
``greedy_k_center`` subsamples a bank so that every point stays close to a selected one (PatchCore's
coreset, FOD's coreset reference).  Both work on rows: ``P``/``Q`` points, ``M`` bank rows, ``D`` dimensions.

Each caller passes the variant it was written and validated with (start rule, projection, squared or
Euclidean distances, lazy or plain loop, order of the distance arithmetic).  Where two variants agree in
exact arithmetic they can still differ by float rounding, hence in a near-tie; keeping each caller's
variant keeps its selections and scores bit-identical to what it produced before this module existed.

Devices: everything runs on the device of the points / queries (the bank must be on the queries' device).
Random draws (projection matrix, start points) always come from the CPU ``generator`` and are then moved,
so a selection on a GPU differs from the CPU's only by the rounding of the distance arithmetic.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from adbench.methods.portable import portable_sqrt

__all__ = ["nearest_distances", "greedy_k_center", "random_projection"]


def nearest_distances(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int = 1,
    *,
    chunk: int | None = None,
    max_elements: int = 1 << 23,
    min_first: bool = False,
) -> torch.Tensor:
    """Euclidean distance of each query to its nearest bank row (mean over the ``k`` nearest), exact.

    Args:
        queries: (Q, D); cast to float32.
        bank: (M, D), on the queries' device; cast to float32.
        k: how many nearest rows to average over.
        chunk: queries per (chunk, M) distance matrix; ``None``: ``max_elements // M`` (at least 1).
        max_elements: the size bound of that matrix when ``chunk`` is ``None``.
        min_first: (``k = 1`` only) take the row minimum of ``|b|^2 - 2 q.b`` (one ``addmm``) and add
            ``|q|^2`` to the minimum alone, one pass fewer over the matrix, instead of forming the full
            squared distances and taking the k smallest.  The two agree up to float32 rounding; PatchSVDD
            uses this order, PatchCore the full one.
    Returns:
        (Q,) float32 distances on the queries' device (an empty CPU tensor for Q = 0).
    """
    if min_first and k != 1:
        raise ValueError(f"min_first works for k = 1 only, got k = {k}")
    queries = queries.float()
    bank = bank.float()
    bank_sq = (bank * bank).sum(1)
    if chunk is None:
        chunk = max(1, max_elements // max(len(bank), 1))
    out = []
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        if min_first:
            d2 = torch.addmm(bank_sq[None, :], q, bank.T, alpha=-2.0).amin(dim=1) + (q * q).sum(1)
            out.append(portable_sqrt(d2.clamp_min_(0)))
        else:
            d2 = (q * q).sum(1, keepdim=True) - 2.0 * q @ bank.T + bank_sq
            out.append(portable_sqrt(d2.topk(k, dim=1, largest=False).values.clamp_(min=0)).mean(1))
    return torch.cat(out) if out else torch.zeros(0)


def random_projection(x: torch.Tensor, dim: int, generator: torch.Generator, kind: str = "linear") -> torch.Tensor:
    """Random linear map of the rows of ``x`` (P, D) to (P, ``dim``), drawn from ``generator``.

    ``kind``: ``"linear"``: weight (dim, D) uniform in +-1/sqrt(D) (``torch.nn.Linear``'s default init, the
    mapper of PatchCore's public code); ``"gaussian"``: matrix (D, dim) with N(0, 1/dim) entries.
    Skipped, returning ``x`` itself (not a copy) and drawing nothing, when ``dim`` is 0 or D <= ``dim``.
    """
    if kind not in ("linear", "gaussian"):
        raise ValueError(f"projection must be 'linear' or 'gaussian', not {kind!r}")
    d = x.shape[1]
    if not dim or d <= dim:
        return x
    if kind == "linear":
        weight = torch.empty(dim, d)
        bound = 1.0 / np.sqrt(d)
        weight.uniform_(-bound, bound, generator=generator)
        return x @ weight.to(x.device).T
    return x @ (torch.randn(d, dim, generator=generator) / dim**0.5).to(x.device)


def greedy_k_center(
    points: torch.Tensor,
    n_select: int,
    generator: torch.Generator,
    *,
    projection_dim: int = 0,
    projection: str = "linear",
    start_points: int | None = None,
    squared: bool = False,
    block: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Greedy k-centre selection: each step takes the point farthest from everything selected so far.

    Args:
        points: (P, D).
        n_select: how many points to select (at most P).
        generator: draws, in this order, the projection and the start.
        projection_dim, projection: distances are measured after ``random_projection(points,
            projection_dim, generator, projection)`` (none when ``projection_dim`` is 0 or >= D).
        start_points: ``None``: the first selected point is uniformly random (FOD).  An integer m: the
            initial distance of every point is its mean distance to m random points, which are not
            selected themselves, and the first selected point is the farthest by that measure (PatchCore's
            public code).
        squared: compare squared Euclidean distances (no clamp at 0, no square root; FOD) instead of
            Euclidean ones (PatchCore).  The same order in exact arithmetic.
        block: ``None``: update every point's distance after each step (one (P, D) @ (D,) product per
            step).  An integer: lazy and exact: the points live in blocks of ``block`` rows, and a block's
            distances are brought up to date, with one (block, D) @ (D, m) product for the m centres added
            since its last update, only when its stale maximum, an upper bound, is the largest of all
            blocks; the selected point is still the exact farthest one, for a fraction of the work.
            CPU only: on other devices (where the lazy loop's host round trip per step would cost more
            than it saves) the plain loop runs, which selects the same points up to float rounding.
        progress: show a progress bar.
    Returns:
        (n_select,) int64 row indices of ``points``, in selection order, on the CPU.
    """
    z = random_projection(points, projection_dim, generator, projection)
    p = z.shape[0]
    n_select = min(int(n_select), p)
    sq = (z * z).sum(1)
    selected = torch.empty(n_select, dtype=torch.long, device=z.device)
    if n_select == 0:
        return selected.cpu()
    if start_points is None:
        selected[0] = int(torch.randint(p, (1,), generator=generator))
        min_dist = torch.full((p,), float("inf"), device=z.device)
        first = 1  # steps that still have to choose a point
    else:
        starts = torch.randint(p, (min(start_points, p),), generator=generator).to(z.device)
        # (P,) approximate distance to the (empty) selection; the direct path: see adbench.methods.portable
        min_dist = torch.cdist(z, z[starts], compute_mode="donot_use_mm_for_euclid_dist").mean(1)
        if squared:
            min_dist = min_dist.square()
        first = 0
    if block is None or z.device.type != "cpu":
        _plain_loop(z, sq, min_dist, selected, first, squared, progress)
        return selected.cpu()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny products: worker threads would only spin and wait
    try:
        _lazy_loop(z, sq, min_dist, selected, first, squared, block, progress)
    finally:
        torch.set_num_threads(threads)
    return selected


def _steps(n: int, progress: bool):
    return tqdm(range(n), desc="coreset", unit="pt", disable=not progress, mininterval=1.0)


def _plain_loop(z, sq, min_dist, selected, first, squared, progress) -> None:
    for i in _steps(len(selected), progress):
        if i >= first:
            selected[i] = torch.argmax(min_dist)
        if i + 1 == len(selected):
            break  # the last selection needs no update
        centre = z.index_select(0, selected[i : i + 1])[0]  # no host round trip on a GPU
        dist = sq - 2.0 * (z @ centre) + centre.square().sum()
        if not squared:
            dist = portable_sqrt(dist.clamp_(min=0))
        min_dist = torch.minimum(min_dist, dist)


def _lazy_loop(z, sq, min_dist, selected, first, squared, block, progress) -> None:
    p = z.shape[0]
    bounds = list(range(0, p, block)) + [p]
    spans = list(zip(bounds[:-1], bounds[1:]))
    block_max = torch.stack([min_dist[a:b].max() for a, b in spans])
    applied = [0] * len(spans)  # how many selected centres each block's min_dist already includes
    centres = torch.empty(len(selected), z.shape[1])
    centres_sq = torch.empty(len(selected))
    for i in range(first):
        centres[i], centres_sq[i] = z[selected[i]], sq[selected[i]]
    for i in _steps(len(selected), progress):
        if i < first:
            continue
        while True:
            k = int(torch.argmax(block_max))
            a, b = spans[k]
            if applied[k] == i:
                break
            new = slice(applied[k], i)
            d2 = sq[a:b, None] - 2.0 * z[a:b] @ centres[new].T + centres_sq[new]
            nearest = d2.min(1).values if squared else portable_sqrt(d2.min(1).values.clamp_(min=0))
            torch.minimum(min_dist[a:b], nearest, out=min_dist[a:b])
            applied[k] = i
            block_max[k] = min_dist[a:b].max()
        idx = a + int(torch.argmax(min_dist[a:b]))
        selected[i] = idx
        centres[i] = z[idx]
        centres_sq[i] = sq[idx]
