"""Shared machinery of the FOD reproducibility suite, one sub-package per stage of the workflow's DAG.

Imports only go down this list (tests/test_layout.py checks it):

* ``spec``: what a method declares about itself (params, defaults, validation, what a fit reads), without
  torch, so that the workflow plans its DAG without importing any numerical library;
* ``protocol``: the contract every stage shares: ``Split`` (one cached split), ``AnomalyMethod`` (fit, then
  predict), ``Prediction``, devices;
* ``data``: ``embedded`` (the offline dataset generator), ``datasets`` (reading MVTec-style layouts),
  ``download`` (fetching and verifying archives);
* ``features``: ``backbone`` (frozen ImageNet feature extractors), ``cache`` (the per-split feature cache);
* ``methods``: ``registry`` (config name -> method class), ``runs`` (a run's identity, config hash and
  folder), ``determinism`` (the kernel pin), ``neighbours`` (nearest-neighbour search and coresets);
* ``evaluation``: ``evaluate`` (one cell: fit, score, ``metrics.json``), ``metrics``, ``integrity`` (file
  digests), ``tracking`` (MLflow), ``learning`` (does a method learn?);
* ``reporting``: ``tables`` (the paper's tables), ``significance``, ``figures``, ``plots``, ``evidence``
  (the figures of a run), ``report`` (the HTML report);
* ``operations``: ``golden`` (the exact gate), ``reseeding`` (seed spreads), ``estimate`` (what a profile
  costs);
* ``jobs``: the workflow rules' entry points, on top of everything.
"""
from pathlib import Path

#: The repository's root (the checkout this package lives in).
ROOT = Path(__file__).resolve().parent.parent
