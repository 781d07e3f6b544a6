"""Config name -> method spec and method class.

Each entry of the config's ``methods`` mapping names an ``impl``; these tables turn it into the method's
spec (``adbench.spec``: params, defaults, what a fit reads; no torch) and into its class (the spec plus the
networks).  Both are imported lazily: checking and planning a config (the Snakefile) imports only the
specs, and running PatchCore never imports DRAEM's networks.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adbench.spec import MethodSpec, ParamError, UnknownParamsError

if TYPE_CHECKING:
    from adbench.protocol import AnomalyMethod

IMPLEMENTATIONS: dict[str, str] = {
    "patchcore": "baselines.patchcore:PatchCore",
    "cflow": "baselines.cflow:CFlow",
    "mkd": "baselines.mkd:MKD",
    "draem": "baselines.draem:DRAEM",
    "patchsvdd": "baselines.patchsvdd:PatchSVDD",
    "fod": "fod.method:FOD",
    "knn_image": "baselines.knn_image:KNNImage",
}


#: impl -> its spec, importable without torch (each class above inherits its spec; tests/test_spec.py).
SPECS: dict[str, str] = {
    "patchcore": "baselines.specs.patchcore:PatchCoreSpec",
    "cflow": "baselines.specs.cflow:CFlowSpec",
    "mkd": "baselines.specs.mkd:MKDSpec",
    "draem": "baselines.specs.draem:DRAEMSpec",
    "patchsvdd": "baselines.specs.patchsvdd:PatchSVDDSpec",
    "fod": "fod.config:FODSpec",
    "knn_image": "baselines.specs.knn_image:KNNImageSpec",
}


def _load(table: dict[str, str], impl: str):
    try:
        target = table[impl]
    except KeyError:
        raise KeyError(f"unknown method impl '{impl}'; known: {', '.join(sorted(table))}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def method_class(impl: str) -> type[AnomalyMethod]:
    """The class registered as ``impl`` (imports its networks, and torch); raises ``KeyError`` naming the
    known ones."""
    return _load(IMPLEMENTATIONS, impl)


def method_spec(impl: str) -> type[MethodSpec]:
    """The spec of the class registered as ``impl``, without importing torch: what checking and planning a
    config need (``check_params``, ``inputs``, ``deterministic``, ...); raises ``KeyError`` as ``method_class``."""
    return _load(SPECS, impl)


class MethodConfigError(ValueError):
    """A ``methods.<name>`` entry of the config cannot work; the message names the config key and the fix."""


def check_method_entry(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve and validate the config entry ``methods.<name>`` before anything runs; return its params.

    Checks that ``impl`` is registered, that every key of ``params`` is one the method knows and that the
    values can work (e.g. every epoch count >= 1), through the class's ``check_params`` (cheap: no data,
    no networks).  Returns the params merged with the method's defaults.

    Raises:
        MethodConfigError: (a ``ValueError``) naming the config key, the bad value and the fix, e.g.
            ``methods.fod.params.epochs = 0: must be >= 1 (0 epochs would train nothing)``.
    """
    impl = entry.get("impl")
    if impl not in IMPLEMENTATIONS:
        raise MethodConfigError(
            f"methods.{name}.impl = {impl!r} is not a registered method; set it to one of: "
            f"{', '.join(sorted(IMPLEMENTATIONS))}")
    params = entry.get("params")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise MethodConfigError(f"methods.{name}.params = {params!r}: must be a mapping of param: value")
    try:
        return method_spec(impl).check_params(dict(params))
    except UnknownParamsError as err:
        raise MethodConfigError(
            f"methods.{name}.params has unknown keys {err.unknown} for impl {impl!r}: fix their spelling or "
            f"remove them; known: {err.known}") from None
    except ParamError as err:
        raise MethodConfigError(f"methods.{name}.params.{err.key} = {err.value!r}: {err.fix}") from None
    except (ValueError, TypeError) as err:
        raise MethodConfigError(f"methods.{name}.params (impl {impl!r}): {err}") from None


def cell_params(name: str, entry: Mapping[str, Any], category: str) -> dict[str, Any]:
    """The resolved params of ``methods.<name>`` for one category: ``params`` with the entry's
    ``per_category[category]`` laid over them (a value tuned per class, e.g. PatchSVDD's ``lambda``), checked
    as ``check_method_entry`` checks ``params``.

    Raises:
        MethodConfigError: as ``check_method_entry``, saying which ``per_category`` entry was laid over.
    """
    override = (entry.get("per_category") or {}).get(category)
    if override is None:
        return check_method_entry(name, entry)
    try:
        return check_method_entry(name, {**entry, "params": {**(entry.get("params") or {}), **override}})
    except MethodConfigError as err:
        raise MethodConfigError(f"{err} (methods.{name}.per_category.{category} laid over methods.{name}.params)") from None
