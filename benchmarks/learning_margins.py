"""How far above their thresholds the tests' "the method learns" assertions sit, over seeds and ISAs.

Every test that fits a method and asserts on an AUROC (or on anomalies scoring above normals) is rebuilt
here with the test's own data, params and budget, imported from the test modules, but for method seeds
0..4 (the seed passed to the method's constructor; the data stay as in the test).  One run measures one
process, i.e. one kernel setting: torch picks CPU kernels by instruction set once, at start-up, from
``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA`` and ``MKL_CBWR`` (see ``adbench.determinism``).

    # both settings (a child process each: native kernels, then pinned to AVX2), then the table
    python benchmarks/learning_margins.py all
    # one setting in this process (set the three variables before Python starts for AVX2)
    python benchmarks/learning_margins.py run --out results/benchmarks/learning_margins_native.json
    python benchmarks/learning_margins.py combine results/benchmarks/learning_margins_{native,avx2}.json

Writes ``results/benchmarks/learning_margins.{json,md}``: per assertion, the value for every seed and
setting, the worst over all of them, the threshold and the margin (worst - threshold, sign-adjusted so
that negative means a failing seed).  Where a test asserts on the median over k seeds, the worst is over
the medians of every k of the seeds; where it expects a failure (a method that does not learn the case),
the row says xfail.  Torch uses its default thread count, as under pytest.  ``--cases other_...`` adds
other budgets for the methods that do not learn (not asserted anywhere; see ``OTHER_BUDGETS``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
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
SETTINGS = ("native", "avx2")
MARGIN = 0.05  # an assertion whose worst value is closer than this to its threshold is flagged


@dataclass(frozen=True)
class Assertion:
    test: str  # pytest node id (file::test[param])
    what: str  # the asserted quantity
    op: str  # ">=", ">", "==", "<=", "<"
    threshold: float
    median_of: int = 1  # > 1: the test asserts on the median over that many seeds (worst over all subsets here)
    xfail: str = ""  # the test expects this to fail (a method problem it reports instead of asserting)
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


# ------------------------------------------------------------------------------------------------ cases
# Each case: fn(seed, context) -> {assertion key: value}, with the test's data and params (imported from the
# test module).  The kernel setting is whatever the environment of the process was when Python started.


def _auroc(labels, scores) -> float:
    from adbench.metrics import roc_auc

    return float(roc_auc(labels, scores))


def _pixel(test, pred) -> float:
    return _auroc(test.masks.numpy().ravel(), pred.maps.ravel())


class Context:
    """Lazily built shared inputs: the embedded splits with real backbone features (as tests/conftest.py)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._embedded: dict[str, tuple] = {}
        self._backbone = None
        self._root = None

    def embedded_splits(self, category: str):
        if category not in self._embedded:
            from conftest import SMALL, SPLIT_SIZE

            from adbench.backbone import Backbone
            from adbench.embedded import generate_category
            from adbench.features import extract_split

            if self._root is None:
                self._root = self.tmp / "embedded"
                for cat in ("brick", "coins"):
                    generate_category(self._root, cat, SMALL)
                self._backbone = Backbone("tf_efficientnet_lite0", self.tmp / "weights")
            self._embedded[category] = tuple(
                extract_split("embedded", self._root, category, split, self._backbone, SPLIT_SIZE, progress=False)
                for split in ("train", "test"))
        return self._embedded[category]


def _synthetic_case(name: str, module: str, cls: str, seed: int) -> dict[str, float]:
    """CFLOW's and MKD's test case: the test module's FAST params on its synthetic splits."""
    import importlib

    from synthetic import synthetic_split

    params = importlib.import_module(f"test_{name}").FAST
    method = getattr(importlib.import_module(module), cls)
    train, test = synthetic_split(24, 0, seed=0), synthetic_split(8, 8, seed=1)
    pred = method(params, seed=seed).fit(train).predict(test)
    return {f"{name}.image": _auroc(test.labels, pred.scores), f"{name}.pixel": _pixel(test, pred)}


def case_cflow(seed, ctx):
    return _synthetic_case("cflow", "baselines.cflow", "CFlow", seed)


def case_draem(seed, ctx):
    from test_draem import FIT_PARAMS, make_split

    from baselines.draem import DRAEM

    train, test = make_split(24, 0, seed=0), make_split(8, 8, seed=1)
    pred = DRAEM(FIT_PARAMS, seed=seed).fit(train).predict(test)
    gap = float(pred.scores[test.labels == 1].mean() - pred.scores[test.labels == 0].mean())
    return {"draem.gap": gap, "draem.image": _auroc(test.labels, pred.scores), "draem.pixel": _pixel(test, pred)}


def case_fod(seed, ctx):
    from test_fod_method import TEST, TINY, TRAIN

    from fod.method import FOD

    pred = FOD(TINY, seed=seed).fit(TRAIN).predict(TEST)
    return {"fod.image": _auroc(TEST.labels, pred.scores), "fod.pixel": _pixel(TEST, pred)}


def case_mkd(seed, ctx):
    return _synthetic_case("mkd", "baselines.mkd", "MKD", seed)


def case_patchsvdd(seed, ctx):
    from test_patchsvdd import FIT_PARAMS, make_split

    from baselines.patchsvdd import PatchSVDD

    train, test = make_split(24, 0, seed=0), make_split(8, 8, seed=1)
    pred = PatchSVDD(FIT_PARAMS, seed=seed).fit(train).predict(test)
    # min(anomalous) > max(normal) is image AUROC == 1
    return {"patchsvdd.image": _auroc(test.labels, pred.scores), "patchsvdd.pixel": _pixel(test, pred)}


def case_patchsvdd_backbone(seed, ctx):
    from test_patchsvdd import make_split

    from baselines.patchsvdd import PatchSVDD

    train, test = make_split(12, 0, seed=3), make_split(4, 4, seed=4)
    pred = PatchSVDD({"encoder": "backbone", "epochs": 3, "repeat": 4, "progress": False}, seed=seed).fit(train)
    pred = pred.predict(test)
    return {"patchsvdd_backbone.gap": float(pred.scores[4:].mean() - pred.scores[:4].mean()),
            "patchsvdd_backbone.image": _auroc(test.labels, pred.scores)}


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


def case_embedded(impl, params=None, category=None, key=None):
    """The test's case for ``impl`` (its params and category unless given), one seed."""

    def run(seed, ctx):
        from test_methods_on_embedded import CASES

        from adbench.registry import method_class

        (test_params, test_category), = [(p, c) for i, p, c, _ in CASES if i == impl]
        train, test = ctx.embedded_splits(category or test_category)
        pred = method_class(impl)(params or test_params, seed=seed).fit(train).predict(test)
        out = {key or f"embedded_{impl}.image": _auroc(test.labels, pred.scores)}
        if impl == "patchcore" and key is None:  # test_patchcore's embedded test fits PatchCore({}) on brick too
            from test_patchcore import local_defects

            pred = method_class(impl)({}, seed=seed).fit(train).predict(test)
            keep = local_defects(test)
            out["patchcore_embedded.image"] = _auroc(test.labels, pred.scores)
            out["patchcore_embedded.local"] = _auroc(test.labels[keep], pred.scores[keep])
        return out

    return run


#: Other budgets and categories for the methods that do not learn the embedded data at the test's budget (not
#: asserted anywhere; run with ``--cases``): the numbers behind test_methods_on_embedded.NOT_LEARNING.
OTHER_BUDGETS = {
    "draem_brick": ("draem", {"progress": False}, "brick"),  # the default budget on the other easy category
}


EMB = "tests/test_methods_on_embedded.py::test_method_detects_anomalies_on_its_easiest_category"
CORESET = "tests/test_patchcore.py::test_coreset_stays_within_001_of_exact_search"
ASSERTIONS: dict[str, Assertion] = {
    "cflow.image": Assertion("tests/test_cflow.py::test_anomalies_score_higher", "image AUROC", ">=", 0.9),
    "cflow.pixel": Assertion("tests/test_cflow.py::test_anomalies_score_higher", "pixel AUROC", ">=", 0.85),
    "draem.gap": Assertion("tests/test_draem.py::test_anomalies_score_higher_than_normals",
                           "mean score anomalous - normal", ">", 0.0),
    "draem.image": Assertion("tests/test_draem.py::test_anomalies_score_higher_than_normals", "image AUROC", ">=", 0.8),
    "draem.pixel": Assertion("tests/test_draem.py::test_anomalies_score_higher_than_normals", "pixel AUROC", ">=", 0.8),
    "fod.image": Assertion("tests/test_fod_method.py::test_fit_predict_shapes_and_the_planted_anomaly",
                           "image AUROC", "==", 1.0),
    "fod.pixel": Assertion("tests/test_fod_method.py::test_fit_predict_shapes_and_the_planted_anomaly",
                           "pixel AUROC", ">", 0.8),
    "mkd.image": Assertion("tests/test_mkd.py::test_anomalies_score_higher", "image AUROC", ">=", 0.9),
    "mkd.pixel": Assertion("tests/test_mkd.py::test_anomalies_score_higher", "pixel AUROC", ">=", 0.75),
    "patchsvdd.image": Assertion("tests/test_patchsvdd.py::test_anomalies_score_higher_than_normals",
                                 "image AUROC (min anomalous > max normal)", "==", 1.0),
    "patchsvdd.pixel": Assertion("tests/test_patchsvdd.py::test_anomalies_score_higher_than_normals",
                                 "pixel AUROC", ">=", 0.9),
    "patchsvdd_backbone.gap": Assertion("tests/test_patchsvdd.py::test_backbone_encoder_variant",
                                        "mean score anomalous - normal", ">", 0.0),
    "patchsvdd_backbone.image": Assertion("tests/test_patchsvdd.py::test_backbone_encoder_variant",
                                          "image AUROC (not asserted)", ">", 0.5,
                                          informational=True),
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


def _embedded_assertions() -> dict[str, Assertion]:
    """From the test's table: per method, over how many seeds the median is taken and whether it is xfail."""
    sys.path[:0] = [str(TESTS), str(ROOT)]
    from test_methods_on_embedded import CASES as TEST_CASES
    from test_methods_on_embedded import NOT_LEARNING, THRESHOLD

    return {f"embedded_{impl}.image": Assertion(f"{EMB}[{impl}]", "image AUROC" + (f", median of {len(seeds)} seeds"
                                                                                    if len(seeds) > 1 else ""),
                                                ">", THRESHOLD, len(seeds), NOT_LEARNING.get(impl, ""))
            for impl, _, _, seeds in TEST_CASES}


ASSERTIONS.update(_embedded_assertions())
ASSERTIONS.update({
    f"other_{name}.image": Assertion(f"{EMB}[{impl}]", f"image AUROC, {category}, {params} (not asserted)", ">", 0.6,
                                     informational=True)
    for name, (impl, params, category) in OTHER_BUDGETS.items()})

CASES: dict[str, Callable] = {
    "cflow": case_cflow,
    "draem": case_draem,
    "fod": case_fod,
    "mkd": case_mkd,
    "patchsvdd": case_patchsvdd,
    "patchsvdd_backbone": case_patchsvdd_backbone,
    "patchcore_coreset": case_patchcore_coreset,
    **{f"embedded_{m}": case_embedded(m) for m in ("patchcore", "cflow", "mkd", "draem", "patchsvdd", "fod")},
}
OTHER_CASES = {f"other_{name}": case_embedded(impl, params, category, f"other_{name}.image")
               for name, (impl, params, category) in OTHER_BUDGETS.items()}


# ------------------------------------------------------------------------------------------------- run
def run(cases: list[str], seeds: list[int], out: Path) -> dict:
    """Measure ``cases`` for ``seeds`` in this process; write (and return) the JSON after every case."""
    sys.path[:0] = [str(TESTS), str(ROOT)]
    import torch

    from adbench.determinism import ISA_VARIABLES

    env = {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ}
    result = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "pins": env,
              "setting": "avx2" if env.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2" else "native",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "seeds": seeds, "values": {}}
    print(f"kernels: {result['cpu_capability']} pins: {env or 'none'} threads: {result['threads']}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(Path(tmp))
        for case in cases:
            for seed in seeds:
                for key, value in {**CASES, **OTHER_CASES}[case](seed, ctx).items():
                    result["values"].setdefault(key, {})[str(seed)] = value
                    print(f"{result['setting']} {key} seed {seed}: {value:.4f}", flush=True)
            out.write_text(json.dumps(result, indent=1))
    return result


def combine(paths: list[Path], out: Path, title: str = "") -> str:
    """One table from per-setting runs: per assertion, the worst value over every seed and setting."""
    runs = [json.loads(p.read_text()) for p in paths]
    rows, table = {}, []
    for key, a in ASSERTIONS.items():
        per: dict[str, dict[str, float]] = {}
        for r in runs:
            per.setdefault(r["setting"], {}).update(r["values"].get(key, {}))
        per = {setting: seeds for setting, seeds in per.items() if seeds}
        if not per:
            continue
        # what the test asserts on, for every seed (or every subset of seeds whose median it takes) and setting
        asserted = {s: [statistics.median(c) for c in itertools.combinations(seeds.values(), a.median_of)]
                    for s, seeds in per.items()}
        values = [v for vs in asserted.values() for v in vs]
        worst = a.worst(values)
        failing = sum(not a.holds(v) for v in values)
        if a.informational:
            flag = f"info ({len(values) - failing}/{len(values)} hold)"
        elif failing:
            flag = f"{'xfail' if a.xfail else 'FAIL'} ({failing}/{len(values)})"
        else:  # an equality has no margin: it holds on every seed or it does not
            flag = "tight" if a.op != "==" and a.margin(worst) < a.tight_below else "ok"
        rows[key] = {**a.__dict__, "values": per, "worst": worst, "margin": a.margin(worst), "status": flag,
                     "median": statistics.median(values)}
        cells = [f"{a.worst(asserted[s]):.3f}" if s in per else "-" for s in SETTINGS]
        seeds_txt = "; ".join(f"{s}: " + " ".join(f"{v:.3f}" for v in per[s].values()) for s in SETTINGS if s in per)
        table.append(f"| `{a.test.split('::', 1)[0].removeprefix('tests/')}::{a.test.split('::', 1)[1]}` | {a.what} | "
                     f"{a.op} {a.threshold:g} | {cells[0]} | {cells[1]} | {worst:.3f} | {a.margin(worst):+.3f} | "
                     f"{flag} | {seeds_txt} |")
    caps = ", ".join(f"{r['setting']}: {r['cpu_capability']} ({r['threads']} threads)" for r in runs)
    seeds = sorted({int(s) for r in runs for v in r["values"].values() for s in v})
    md = (f"{title}Method seeds {seeds[0]}..{seeds[-1]}, data as in the tests; kernels {caps}.  'worst' is over "
          f"every seed and setting (for a median over k seeds: over every k of the seeds); margin = distance to the "
          f"threshold on the passing side; tight: < {MARGIN}; xfail: the test expects the failure.\n\n"
          "| test | asserted | threshold | worst native | worst avx2 | worst | margin | status | per seed |\n"
          "|---|---|---|---:|---:|---:|---:|---|---|\n" + "\n".join(table) + "\n")
    reasons = {a.test: a.xfail for key, a in ASSERTIONS.items() if a.xfail and key in rows}
    if reasons:
        md += "\nExpected failures (the test xfails them when they fail):\n\n" + "".join(
            f"* `{test.removeprefix('tests/')}`: {reason}\n" for test, reason in reasons.items())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": [str(p) for p in paths], "capabilities": caps,
                                                    "assertions": rows}, indent=1))
    out.with_suffix(".md").write_text(md)
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure in this process (its kernel setting)")
    r.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES) + list(OTHER_CASES))
    r.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("combine", help="one table from per-setting runs")
    c.add_argument("runs", nargs="+", type=Path)
    c.add_argument("--out", type=Path, default=OUT_DIR / "learning_margins")
    b = sub.add_parser("all", help="a child process per setting (native, AVX2), then combine")
    b.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES) + list(OTHER_CASES))
    b.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    b.add_argument("--out", type=Path, default=OUT_DIR / "learning_margins")
    a = p.parse_args()
    if a.cmd == "run":
        run(a.cases, a.seeds, a.out)
    elif a.cmd == "combine":
        print(combine(a.runs, a.out))
    else:
        sys.path.insert(0, str(ROOT))
        from adbench.determinism import ISA_VARIABLES, isa_environment

        paths = []
        for setting in SETTINGS:
            env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES} | isa_environment(setting)
            path = a.out.parent / f"{a.out.name}_{setting}.json"
            subprocess.run([sys.executable, __file__, "run", "--out", str(path), "--cases", *a.cases,
                            "--seeds", *map(str, a.seeds)], check=True, env=env, cwd=ROOT)
            paths.append(path)
        print(combine(paths, a.out))


if __name__ == "__main__":
    main()
