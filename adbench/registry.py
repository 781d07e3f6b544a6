"""Config name -> method class.

Each entry of the config's ``methods`` mapping names an ``impl``; this table turns it into the class.  The
classes are imported lazily so that running PatchCore never imports DRAEM's networks.
"""
from __future__ import annotations

import importlib

from adbench.protocol import AnomalyMethod

IMPLEMENTATIONS: dict[str, str] = {
    "patchcore": "baselines.patchcore:PatchCore",
    "cflow": "baselines.cflow:CFlow",
    "mkd": "baselines.mkd:MKD",
    "draem": "baselines.draem:DRAEM",
    "patchsvdd": "baselines.patchsvdd:PatchSVDD",
    "fod": "fod.method:FOD",
}


def method_class(impl: str) -> type[AnomalyMethod]:
    """The class registered as ``impl``; raises ``KeyError`` naming the known ones."""
    try:
        target = IMPLEMENTATIONS[impl]
    except KeyError:
        raise KeyError(f"unknown method impl '{impl}'; known: {', '.join(sorted(IMPLEMENTATIONS))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
