"""How far the tests' learning assertions sit from their bars, over seeds and kernel settings.

Two kinds of rows, both rebuilt from the code the tests run (nothing re-implemented here):

* the learning check (tests/test_learning.py, ``adbench.evaluation.learning``): every configuration a registered
  method's ``learning_budget`` declares, fitted on the CI data for method seeds 0..4 (``fit_over``), trained
  and with training skipped; the test asserts on seeds 0-2 (``adbench.evaluation.learning.SEEDS``), so the table gives
  those means and, for robustness, the worst over every 3 of the measured seeds; the shuffled mutation, and
  each bar's chance probability (image: exact; local pixel: the seeds-0-2 maps permuted, 100,000 draws);
* the other AUROC assertions with a seed (test_draem's synthetic learning test and its negative control,
  test_patchcore's coreset bound and embedded check), with the test's own data and params imported from the
  test module, for method seeds 0..4.

One run measures one process, i.e. one kernel setting: torch and numpy pick CPU kernels once, at start-up,
from the variables of ``adbench.methods.determinism``.  Three settings: ``native``; ``avx2-no-mkl``, the
pin without ``MKL_CBWR`` (MKL's matrix products on the host's own branch: what the tests see on an
AVX-512 machine when they are run under the pin's other variables); ``avx2``, the workflow's full pin
(the same numbers as on any other x86-64 machine).

    # all three settings (a child process each), then the tables
    python benchmarks/learning_margins.py all
    # one setting in this process (set the pin's variables before Python starts for AVX2)
    python benchmarks/learning_margins.py run --out results/benchmarks/learning_margins_native.json
    python benchmarks/learning_margins.py combine results/benchmarks/learning_margins_{native,avx2}.json

Writes ``results/benchmarks/learning_margins.{json,md}``.  Fits run on one torch thread, as in the tests.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
OUT_DIR = ROOT / "results" / "benchmarks"
SEEDS = (0, 1, 2, 3, 4)
SETTINGS = ("native", "avx2-no-mkl", "avx2")
MARGIN = 0.05  # an assertion whose worst value is closer than this to its bar is flagged
NULL_DRAWS = 100_000


@dataclass(frozen=True)
class Assertion:
    test: str  # pytest node id (file::test[param])
    what: str  # the asserted quantity
    op: str  # ">=", ">", "==", "<=", "<"
    threshold: float
    informational: bool = False  # measured for comparison, asserted by no test
    tight_below: float = MARGIN  # a margin below this is flagged (absolute bounds that are not AUROCs set their own)

    def holds(self, value: float) -> bool:
        return {">=": value >= self.threshold, ">": value > self.threshold, "==": value == self.threshold,
                "<=": value <= self.threshold, "<": value < self.threshold}[self.op]

    def worst(self, values: list[float]) -> float:
        return max(values) if self.op in ("<=", "<") else min(values)

    def margin(self, value: float) -> float:
        """Distance to the threshold, positive on the passing side."""
        return self.threshold - value if self.op in ("<=", "<") else value - self.threshold


class Context:
    """Lazily built shared inputs: the CI data's splits with real backbone features (as tests/conftest.py)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._splits: dict[str, tuple] = {}

    def ci_splits(self) -> dict[str, tuple]:
        """category -> (train, test) for test_learning's categories."""
        if not self._splits:
            from conftest import SMALL, SPLIT_SIZE
            from test_learning import CATEGORIES

            from adbench.features.backbone import Backbone
            from adbench.data.embedded import generate_category
            from adbench.features.cache import extract_split

            root = self.tmp / "embedded"
            backbone = Backbone("tf_efficientnet_lite0", self.tmp / "weights")
            for category in CATEGORIES:
                generate_category(root, category, SMALL)
                self._splits[category] = tuple(
                    extract_split("embedded", root, category, split, backbone, SPLIT_SIZE, progress=False)
                    for split in ("train", "test"))
        return self._splits


# ----------------------------------------------------------------------------------- the learning check
def measure_learning(seeds: list[int], ctx: Context) -> dict:
    """Per configuration: per-fit statistics (trained, untrained, shuffled) for ``seeds`` and, on the
    asserted seeds, the check's verdicts and the chance probabilities of the bars."""
    from test_learning import BUDGETS, KINDS

    from adbench.evaluation import learning

    out = {}
    for budget in BUDGETS:
        row = {"bars": budget.bars, "trains": budget.trains}
        variants = {"trained": learning.fit_over(budget, ctx.ci_splits(), seeds)}
        # as the test: the asserted seeds' fits (categories, then seeds), shuffled as one list
        variants["shuffled"] = learning.shuffled([f for f in variants["trained"] if f.seed in learning.SEEDS])
        if budget.trains:
            variants["untrained"] = learning.fit_over(budget, ctx.ci_splits(), seeds, untrained=True)
        for name, fits in variants.items():
            row[name] = {f"{f.category}/{f.seed}": learning.fit_statistics(f, KINDS) for f in fits}
            asserted = [f for f in fits if f.seed in learning.SEEDS]
            if len(asserted) == len(learning.SEEDS) * len(ctx.ci_splits()):
                row[f"{name}_passes"] = learning.check(budget, asserted, KINDS).passed
        asserted = [f for f in variants["trained"] if f.seed in learning.SEEDS]
        counts = [(int((f.test.labels == 0).sum()), int(f.test.labels.sum())) for f in asserted]
        row["chance"] = {"image_auroc": learning.image_chance(budget.bars.get("image_auroc", learning.IMAGE_FLOOR),
                                                                counts)}
        p, q98 = learning.local_pixel_chance(asserted, budget.bars.get("local_pixel_auroc", learning.LOCAL_PIXEL_FLOOR),
                                             KINDS, NULL_DRAWS)
        row["chance"].update({"local_pixel_auroc": p, "local_pixel_q98": q98})
        out[budget.label] = row
        print(f"learning {budget.label}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k.endswith("passes")),
              flush=True)
    return out


def _means(per_fit: dict, statistic: str, seeds) -> float:
    values = [v[statistic] for key, v in per_fit.items() if int(key.split("/")[1]) in seeds]
    return sum(values) / len(values)


def learning_table(runs: list[dict]) -> tuple[str, dict]:
    """Markdown and JSON rows for the learning check from per-setting runs."""
    sys.path[:0] = [str(TESTS), str(ROOT)]
    from adbench.evaluation import learning

    settings = " / ".join(SETTINGS)
    lines = [f"| configuration | statistic | bar | trained, seeds 0-2 ({settings}) | worst of any 3 seeds | "
             "untrained, seeds 0-2 | shuffled, seeds 0-2 | chance passes the bar | verdicts (trained / "
             "untrained / shuffled) |", "|---|---|---:|---|---|---|---|---|---|"]
    rows = {}
    labels = list(dict.fromkeys(label for r in runs for label in r.get("learning", {})))
    for label in labels:
        per = {r["setting"]: r["learning"][label] for r in runs if label in r.get("learning", {})}
        first = next(iter(per.values()))
        rows[label] = per
        for statistic in learning.STATISTICS:
            bar = first["bars"].get(statistic)
            cells = []
            for variant in ("trained", "worst", "untrained", "shuffled"):
                values = []
                for setting in SETTINGS:
                    if setting not in per or (variant == "untrained" and "untrained" not in per[setting]):
                        values.append("-")
                        continue
                    fits = per[setting]["trained" if variant == "worst" else variant]
                    if variant == "worst":
                        seeds = sorted({int(k.split("/")[1]) for k in fits})
                        subsets = itertools.combinations(seeds, len(learning.SEEDS))
                        value = min(_means(fits, statistic, c) for c in subsets)
                    else:
                        value = _means(fits, statistic, learning.SEEDS)
                    values.append(f"{value:.3f}" + (f" ({value - bar:+.3f})" if bar is not None and variant != "worst"
                                                     else ""))
                cells.append(" / ".join(values))
            chance = [per[s]["chance"][statistic] for s in SETTINGS if s in per]
            chance_txt = " / ".join(f"{c:.2g}" for c in chance)
            if statistic == "local_pixel_auroc":
                chance_txt += " (98th pct " + " / ".join(f"{per[s]['chance']['local_pixel_q98']:.3f}"
                                                          for s in SETTINGS if s in per) + ")"
            verdicts = " ; ".join(
                "/".join(str(per[s].get(f"{v}_passes", "-")) for v in ("trained", "untrained", "shuffled"))
                for s in SETTINGS if s in per)
            lines.append(f"| {label} | {statistic} | {'not judged' if bar is None else bar} | {cells[0]} | "
                         f"{cells[1]} | {cells[2]} | {cells[3]} | {chance_txt if bar is not None else '-'} | "
                         f"{verdicts} |")
    return "\n".join(lines) + "\n", rows


# ------------------------------------------------------------------------------------- other assertions
# Each case: fn(seed, context) -> {assertion key: value}, with the test's data and params (imported from the
# test module).  The kernel setting is whatever the environment of the process was when Python started.


def _auroc(labels, scores) -> float:
    from adbench.evaluation.metrics import roc_auc

    return float(roc_auc(labels, scores))


def case_draem_synthetic(seed, ctx):
    """test_draem's learning test and its negative control (training skipped), for method seed ``seed``; the
    permutation null of the trained maps' pixel AUROC (20,000 draws)."""
    import numpy as np
    import torch
    from test_draem import FIT_PARAMS, make_split

    from adbench.evaluation.learning import permutation_null, training_skipped
    from baselines.draem import DRAEM

    train, test = make_split(24, 0, seed=0), make_split(8, 8, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as test_draem's module fixture
    try:
        out = {}
        for name, ctx_manager in (("trained", None), ("skipped", training_skipped)):
            if ctx_manager is None:
                pred = DRAEM(FIT_PARAMS, seed=seed).fit(train).predict(test)
            else:
                with ctx_manager():
                    pred = DRAEM(FIT_PARAMS, seed=seed).fit(train).predict(test)
            out[f"draem_{name}.image"] = _auroc(test.labels, pred.scores)
            out[f"draem_{name}.pixel"] = _auroc(test.masks.numpy().ravel(), pred.maps.ravel())
            if name == "trained":
                null = permutation_null(test.masks.numpy(), pred.maps, 20_000, np.random.default_rng(0), matched=False)
                out["draem_trained.pixel_null_q98"] = float(np.quantile(null, 0.98))
    finally:
        torch.set_num_threads(threads)
    return out


_EXACT: dict[int, float] = {}


def case_patchcore_coreset(seed, ctx):
    """The test's data seeds 0 and 1, each with coreset-selection seed ``seed`` (exact search has none)."""
    import torch
    from test_patchcore import _synthetic_split

    from baselines.patchcore import PatchCore

    out = {}
    for data_seed in (0, 1):
        g = torch.Generator().manual_seed(data_seed)
        train, test = _synthetic_split(60, False, g), _synthetic_split(200, True, g)
        dims = {"pretrain_embed_dim": 128, "target_embed_dim": 128}
        if data_seed not in _EXACT:
            exact_pred = PatchCore({"coreset_ratio": 1.0, **dims}).fit(train).predict(test)
            _EXACT[data_seed] = _auroc(test.labels, exact_pred.scores)
        exact = _EXACT[data_seed]
        approx_pred = PatchCore({"coreset_ratio": 0.1, **dims}, seed=seed).fit(train).predict(test)
        approx = _auroc(test.labels, approx_pred.scores)
        # a broken selection for comparison: a random 10% of the bank (the bound must reject it)
        bank = PatchCore({"coreset_ratio": 1.0, **dims}).fit(train)
        pick = torch.randperm(len(bank.memory_bank), generator=torch.Generator().manual_seed(seed))
        bank.memory_bank = bank.memory_bank[pick[: int(len(pick) * 0.1)]]
        out[f"patchcore_coreset{data_seed}.random_diff"] = abs(exact - _auroc(test.labels, bank.predict(test).scores))
        out[f"patchcore_coreset{data_seed}.exact_lo"] = exact
        out[f"patchcore_coreset{data_seed}.exact_hi"] = exact
        out[f"patchcore_coreset{data_seed}.diff"] = abs(exact - approx)
    return out


def case_patchcore_embedded(seed, ctx):
    """test_patchcore's embedded check: PatchCore({}) on brick, good vs local-defect images."""
    from test_patchcore import local_defects

    from baselines.patchcore import PatchCore

    train, test = ctx.ci_splits()["brick"]
    pred = PatchCore({}, seed=seed).fit(train).predict(test)
    keep = local_defects(test)
    return {"patchcore_embedded.image": _auroc(test.labels, pred.scores),
            "patchcore_embedded.local": _auroc(test.labels[keep], pred.scores[keep])}


DRAEM = "tests/test_draem.py::test_anomalies_score_higher_than_normals"
CORESET = "tests/test_patchcore.py::test_coreset_stays_within_001_of_exact_search"
ASSERTIONS: dict[str, Assertion] = {
    "draem_trained.image": Assertion(f"{DRAEM}[trained]", "image AUROC (seed 0 asserted)", ">=", 0.8),
    "draem_trained.pixel": Assertion(f"{DRAEM}[trained]", "pixel AUROC (seed 0 asserted)", ">=", 0.8),
    "draem_trained.pixel_null_q98": Assertion(f"{DRAEM}[trained]", "98th pct of the pixel AUROC of permuted "
                                              "maps (chance; not asserted)", "<", 0.8, informational=True),
    # the negative control fails when either value is below its bar: the pixel AUROC is the one that does
    "draem_skipped.image": Assertion(f"{DRAEM}[skipped]", "image AUROC, training skipped (not asserted alone)",
                                     "<", 0.8, informational=True),
    "draem_skipped.pixel": Assertion(f"{DRAEM}[skipped]", "pixel AUROC, training skipped", "<", 0.8),
    # exact search has no seed (the data's hardness, not learning); the coreset bound is 0.01 wide
    **{f"patchcore_coreset{d}.{k}": Assertion(f"{CORESET}[{d}]", what, op, t, tight_below=tight)
       for d in (0, 1) for k, what, op, t, tight in (("exact_lo", "exact image AUROC", ">", 0.95, 0.0),
                                                     ("exact_hi", "exact image AUROC", "<", 1.0, 0.0),
                                                     ("diff", "|exact - coreset| image AUROC", "<=", 0.01, 0.002))},
    **{f"patchcore_coreset{d}.random_diff": Assertion(f"{CORESET}[{d}]", "|exact - random 10% subset| (not asserted: "
                                                      "a broken selection the bound must reject)", ">", 0.01,
                                                      informational=True) for d in (0, 1)},
    "patchcore_embedded.image": Assertion("tests/test_patchcore.py::test_scores_maps_determinism_and_round_trip",
                                          "image AUROC, all defects (asserted > 0.8 before)", ">", 0.8,
                                          informational=True),
    "patchcore_embedded.local": Assertion("tests/test_patchcore.py::test_scores_maps_determinism_and_round_trip",
                                          "image AUROC, good vs local defects", ">", 0.85),
}

CASES: dict[str, Callable] = {
    "draem_synthetic": case_draem_synthetic,
    "patchcore_coreset": case_patchcore_coreset,
    "patchcore_embedded": case_patchcore_embedded,
}
ALL_CASES = ["learning", *CASES]


# ------------------------------------------------------------------------------------------------- run
def setting_environment(setting: str) -> dict[str, str]:
    """The kernel variables of ``setting`` (one of ``SETTINGS``)."""
    sys.path.insert(0, str(ROOT))
    from adbench.methods.determinism import isa_environment

    if setting == "avx2-no-mkl":
        return {k: v for k, v in isa_environment("avx2").items() if k != "MKL_CBWR"}
    return isa_environment(setting)


def run(cases: list[str], seeds: list[int], out: Path) -> dict:
    """Measure ``cases`` for ``seeds`` in this process; write (and return) the JSON after every case."""
    sys.path[:0] = [str(TESTS), str(ROOT)]
    # The test modules it imports load tests/conftest.py, which would pin the kernels (and refuses to once
    # torch is loaded); this process measures the setting it was started with instead.
    os.environ["ADBENCH_TEST_CPU_ISA"] = "native"
    import torch

    from adbench.methods.determinism import ISA_VARIABLES

    env = {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ}
    setting = next((s for s in SETTINGS if setting_environment(s) == env), f"other {env}")
    result = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "pins": env, "setting": setting,
              "torch": torch.__version__, "seeds": seeds, "values": {}}
    print(f"kernels: {result['cpu_capability']} pins: {env or 'none'}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(Path(tmp))
        for case in cases:
            if case == "learning":
                result["learning"] = measure_learning(seeds, ctx)
            else:
                for seed in seeds:
                    for key, value in CASES[case](seed, ctx).items():
                        result["values"].setdefault(key, {})[str(seed)] = value
                        print(f"{result['setting']} {key} seed {seed}: {value:.4f}", flush=True)
            out.write_text(json.dumps(result, indent=1))
    return result


def combine(paths: list[Path], out: Path, title: str = "") -> str:
    """The tables from per-setting runs: the learning check's, then per other assertion the worst value over
    every seed and setting."""
    runs = [json.loads(p.read_text()) for p in paths]
    learning_md, learning_rows = learning_table(runs)
    rows, table = {}, []
    for key, a in ASSERTIONS.items():
        per: dict[str, dict[str, float]] = {}
        for r in runs:
            per.setdefault(r["setting"], {}).update(r["values"].get(key, {}))
        per = {setting: seeds for setting, seeds in per.items() if seeds}
        if not per:
            continue
        values = [v for seeds in per.values() for v in seeds.values()]
        worst = a.worst(values)
        failing = sum(not a.holds(v) for v in values)
        if a.informational:
            flag = f"info ({len(values) - failing}/{len(values)} hold)"
        elif failing:
            flag = f"FAIL on some seed ({failing}/{len(values)})"
        else:  # an equality has no margin: it holds on every seed or it does not
            flag = "tight" if a.op != "==" and a.margin(worst) < a.tight_below else "ok"
        rows[key] = {**a.__dict__, "values": per, "worst": worst, "margin": a.margin(worst), "status": flag}
        cells = " | ".join(f"{a.worst(list(per[s].values())):.3f}" if s in per else "-" for s in SETTINGS)
        seeds_txt = "; ".join(f"{s}: " + " ".join(f"{v:.3f}" for v in per[s].values()) for s in SETTINGS if s in per)
        table.append(f"| `{a.test.removeprefix('tests/')}` | {a.what} | {a.op} {a.threshold:g} | {cells} | "
                     f"{worst:.3f} | {a.margin(worst):+.3f} | {flag} | {seeds_txt} |")
    caps = ", ".join(f"{r['setting']}: {r['cpu_capability']}" for r in runs)
    md = (f"{title}Kernels {caps}; one torch thread per fit.\n\n"
          "## The learning check (tests/test_learning.py)\n\n"
          "Means over the CI data's categories and the asserted seeds 0-2 (margin to the bar in brackets), the "
          "worst such mean over any 3 of the measured seeds, the same with training skipped and with the output "
          "shuffled across test images; chance: the probability that a method that learnt nothing passes the bar "
          "(image: exact; local pixel: its own seeds-0-2 maps permuted over the images, "
          f"{NULL_DRAWS:,} draws, and that null's 98th percentile); verdicts of the whole check per setting.\n\n"
          + learning_md +
          "\n## Other learning assertions\n\n"
          "Per seed and setting; 'worst' over all of them; margin = distance to the threshold on the passing side; "
          f"tight: < {MARGIN}.\n\n"
          "| test | asserted | threshold | " + " | ".join(f"worst {s}" for s in SETTINGS) + " | worst | margin | "
          "status | per seed |\n|---|---|---|" + "---:|" * (len(SETTINGS) + 2) + "---|---|\n" + "\n".join(table) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": [str(p) for p in paths], "capabilities": caps,
                                                    "learning": learning_rows, "assertions": rows}, indent=1))
    out.with_suffix(".md").write_text(md)
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure in this process (its kernel setting)")
    r.add_argument("--cases", nargs="+", default=ALL_CASES, choices=ALL_CASES)
    r.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("combine", help="the tables from per-setting runs")
    c.add_argument("runs", nargs="+", type=Path)
    c.add_argument("--out", type=Path, default=OUT_DIR / "learning_margins")
    b = sub.add_parser("all", help="a child process per setting (native, AVX2), then combine")
    b.add_argument("--cases", nargs="+", default=ALL_CASES, choices=ALL_CASES)
    b.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    b.add_argument("--out", type=Path, default=OUT_DIR / "learning_margins")
    a = p.parse_args()
    if a.cmd == "run":
        sys.path.insert(0, str(ROOT))
        from adbench.methods.determinism import flush_denormals

        flush_denormals()  # as tests/conftest.py does for the test session
        run(a.cases, a.seeds, a.out)
    elif a.cmd == "combine":
        print(combine(a.runs, a.out))
    else:
        sys.path.insert(0, str(ROOT))
        from adbench.methods.determinism import ISA_VARIABLES

        paths = []
        for setting in SETTINGS:
            env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES} | setting_environment(setting)
            path = a.out.parent / f"{a.out.name}_{setting}.json"
            subprocess.run([sys.executable, __file__, "run", "--out", str(path), "--cases", *a.cases,
                            "--seeds", *map(str, a.seeds)], check=True, env=env, cwd=ROOT)
            paths.append(path)
        print(combine(paths, a.out))


if __name__ == "__main__":
    main()
