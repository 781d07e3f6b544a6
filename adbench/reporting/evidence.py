"""The workflow's figures of one dataset's runs (Table 2's dataset and methods), drawn by ``adbench.reporting.figures``.

What ``draw_figures`` writes into ``out`` (each as ``.png`` and ``.pdf``):

* ``heatmap_image_auroc``, ``heatmap_pixel_auroc``: categories x methods, mean over seeds, plus a mean row;
* ``cd_diagram`` (3 or more methods, 2 or more categories): average ranks of the methods' image AUROC over categories, Nemenyi critical difference;
* ``roc_<dataset>_<category>``: every method's image-level ROC, first seed;
* ``gallery_<dataset>_<category>``: a normal image and one defect of each kind (local, global, logical when
  the dataset has them): image, ground truth and each method's map (first seed);
* ``training_<method>``: per-epoch training losses (and test monitoring) of every FOD method, from run.json;
* ``paper_scatter``: reproduced vs paper image AUROC per category, on MVTec AD only (the paper has
  per-category values there alone), when one of its categories and methods was run.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from adbench.data.datasets import defect_kinds
from adbench.methods.runs import run_folder
from adbench.reporting.tables import load_metrics, paper_reference


def draws_cd_diagram(n_methods: int, n_categories: int) -> bool:
    """The Friedman / Nemenyi ranks behind the critical-difference diagram need 3 methods on 2 categories."""
    return n_methods >= 3 and n_categories >= 2


def draws_paper_scatter(kind: str, categories: list[str], impls: list[str]) -> bool:
    """The paper has per-category values (Table 2, image AUROC) for MVTec AD only: one of its categories and
    one of its methods must have been run."""
    if kind != "mvtec_ad":
        return False
    per_category, _ = paper_reference(kind, "image_auroc")
    return bool(set(categories) & set(per_category.index)) and bool(set(impls) & set(per_category.columns))


def draw_figures(results: str | Path, dataset: str, categories: list[str], methods: list[str],
                 seeds_of: dict[str, list[int]], curve_methods: list[str], feature_tag: str, out: str | Path,
                 expected: dict[str, str] | None = None) -> list[Path]:
    """Draw every figure listed in the module docstring; returns the files written.

    ``seeds_of``: each method's seeds (the workflow's ``method_seeds``); ``curve_methods``: the methods whose
    training curves are drawn; ``expected``: metrics.json path -> config hash, stale runs are refused
    (``adbench.reporting.tables.load_metrics``).
    """
    from adbench.reporting import figures  # matplotlib, torch: not for the workflow's parse-time predicates above
    from adbench.features.cache import load_split
    from adbench.reporting.significance import friedman_nemenyi

    out = Path(out)
    paths = [f"{run_folder(results, dataset, c, m, s)}/metrics.json" for c in categories for m in methods
             for s in seeds_of[m]]
    runs = load_metrics(paths, expected)
    kind = runs["dataset_kind"].iloc[0]
    written: list[Path] = []
    means = {}
    for metric in ("image_auroc", "pixel_auroc"):
        table = runs.groupby(["category", "method"])[metric].mean().unstack("method").reindex(
            index=categories, columns=methods)
        means[metric] = table
        shown = pd.concat([table, table.mean().to_frame("mean").T])
        written += figures.auroc_heatmap(shown, f"{metric.replace('_', ' ')} on {dataset} (mean over seeds)",
                                         out / f"heatmap_{metric}")
    if draws_cd_diagram(len(methods), len(categories)):
        ranks = friedman_nemenyi(means["image_auroc"])
        written += figures.cd_diagram(ranks.ranks, ranks.nemenyi, ranks.cd, len(categories), out / "cd_diagram")
    kinds = defect_kinds(kind)
    for category in categories:
        first = {m: run_folder(results, dataset, category, m, seeds_of[m][0]) for m in methods}
        curves = figures.load_roc_curves({m: f"{folder}/scores.csv" for m, folder in first.items()})
        written += figures.roc_curves(curves, f"{dataset} / {category}: image-level ROC (first seed)",
                                      out / f"roc_{dataset}_{category}")
        split = load_split(Path(results) / "features" / dataset / category / feature_tag / "test.pt")
        maps = figures.load_maps({m: f"{folder}/maps.npz" for m, folder in first.items()}, split.ids)
        picks = figures.pick_gallery_samples(split.ids, split.defect_types, kinds)
        rows = figures.gallery_rows(split, maps, picks, category, kinds)
        written += figures.map_gallery(rows, methods, figures.map_ranges(maps), out / f"gallery_{dataset}_{category}")
    for method in curve_methods:
        histories = {f"{c}/seed{s}": figures.load_history(f"{run_folder(results, dataset, c, method, s)}/run.json")
                     for c in categories for s in seeds_of[method]}
        written += figures.training_curves(histories, out / f"training_{method}",
                                           f"{method} on {dataset}: training losses per epoch")
    impls = dict(zip(runs["method"], runs["impl"])) if "impl" in runs else {}
    if draws_paper_scatter(kind, categories, [impls.get(m, m) for m in methods]):
        per_category, _ = paper_reference(kind, "image_auroc")
        rows = [{"method": m, "category": c, "ours": means["image_auroc"].loc[c, m],
                 "paper": per_category[impls.get(m, m)].get(c) if impls.get(m, m) in per_category else None}
                for m in methods for c in categories]
        written += figures.paper_scatter(pd.DataFrame(rows), out / "paper_scatter",
                                         f"{dataset}: image AUROC per category, reproduced vs paper (Table 2)")
    return written
