"""What a method declares about itself, without torch: its params (defaults, validation), what a fit reads,
and how the workflow plans it (seeds, epochs, figures, Table 4 rows).

Each registered method has a spec class, importable with no numerical library, and its
``AnomalyMethod`` class (``adbench.protocol``) inherits from it.  The Snakefile plans and checks the whole
DAG from the specs alone (``adbench.methods.registry.method_spec``), so building the DAG, a dry run and
every cluster job's start never import torch; only a job that fits or scores imports the method's
networks (``method_class``).  ``tests/test_spec.py`` checks both halves agree.
"""
from __future__ import annotations

import numbers
from typing import Any, ClassVar, Mapping


class UnknownParamsError(ValueError):
    """A method's params name keys its defaults lack (a misspelt key would otherwise be ignored).

    Attributes:
        method: the method's name, as in the message (e.g. ``"CFLOW"``).
        unknown: the offending keys, sorted.
        known: every key the method accepts, sorted.
    """

    def __init__(self, method: str, unknown: list[str], known: list[str]) -> None:
        self.method, self.unknown, self.known = method, list(unknown), list(known)
        super().__init__(f"unknown {method} params {self.unknown}; known: {self.known}")


class ParamError(ValueError):
    """One method param has a value that cannot work; ``fix`` says what it must be.

    The config check (``adbench.methods.registry.check_method_entry``) re-words it with the config key, e.g.
    ``methods.fod.params.epochs = 0: must be >= 1 (0 epochs would train nothing)``.
    """

    def __init__(self, method: str, key: str, value: Any, fix: str) -> None:
        self.method, self.key, self.value, self.fix = method, key, value, fix
        super().__init__(f"{method} param {key} = {value!r}: {fix}")


def check_epoch_counts(method: str, params: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    """Every ``params[key]`` for ``key`` in ``keys`` (those present) is a whole number >= 1.

    These are the counts that drive training (epochs, meta-epochs, repeats): 0 trains nothing, so the
    untrained model would score at chance without any error.

    Raises:
        ParamError: naming ``method``, the key and the value, e.g.
            ``FOD param epochs = 0: must be >= 1 (0 epochs would train nothing)``.
    """
    for key in keys:
        if key not in params:
            continue
        value = params[key]
        whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole:
            raise ParamError(method, key, value, "must be a whole number >= 1")
        if value < 1:
            what = f"{value} {key}" if key.endswith("epochs") else f"{key} = {value}"
            raise ParamError(method, key, value, f"must be >= 1 ({what} would train nothing)")


def merge_params(method_name: str, params: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A method's resolved params: ``defaults`` updated with ``params`` (a new dict, ``defaults``' key order).

    Methods pass the result to ``AnomalyMethod.__init__``, so ``self.params``, and what ``save`` stores, is
    the full set: a saved model never depends on later defaults.

    Raises:
        UnknownParamsError: (a ``ValueError``) ``params`` has keys that ``defaults`` lacks (a misspelt key
            would otherwise be ignored); the message names them, e.g.
            ``unknown CFLOW params ['lr_rate']; known: [...]``.
    """
    params = dict(params or {})
    if "device" in params and "device" not in defaults:  # DRAEM and PatchSVDD took one until issue 8
        raise ParamError(method_name, "device", params["device"], "methods take no device param any more; "
                         "remove it and set the top-level config key `device:` (auto, cpu, cuda or cuda:N)")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise UnknownParamsError(method_name, unknown, sorted(defaults))
    return {**defaults, **params}


class MethodSpec:
    """The declarative half of a method (its ``AnomalyMethod`` subclass inherits it).

    A spec sets ``name`` (the registry key), ``label`` (its name in messages) and ``defaults``, and
    overrides ``validate`` for values no default check covers.  ``check_params`` turns a config's
    ``params`` into the resolved set the method is built with (``AnomalyMethod`` subclasses call it in
    ``__init__``), so the config check and the running method accept and reject the same params.
    """

    name: ClassVar[str]
    #: The method's name in params messages, e.g. ``unknown CFLOW params [...]``.
    label: ClassVar[str]
    #: Every param the method takes and its default (``merge_params``).
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: The params that name one of a few readings, and those readings (checked by ``check_params``).
    choices: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: The params that count passes over the training data (epochs, meta-epochs, repeats); each must be
    #: >= 1, checked when the method is built.  Empty for methods that do not train (PatchCore).
    epoch_params: ClassVar[tuple[str, ...]] = ()
    #: True for a method whose ``fit`` takes ``monitor=<test Split>`` to score it while training (FOD's
    #: ``monitor_every``: the authors' best-epoch-on-test numbers, reported beside the last epoch's); the
    #: runner hands the test split only to such a method, and only when ``monitor_interval`` is > 0.
    monitors_test: ClassVar[bool] = False
    #: True when ``fit`` does not depend on the seed: the runner then fits the method for the first of
    #: ``run.seeds`` only (tests/test_contract.py checks that two seeds give the same maps).
    deterministic: ClassVar[bool] = False
    #: True when the run's per-epoch training losses deserve a figure (rule ``figures``: training_<method>).
    records_curves: ClassVar[bool] = False

    @classmethod
    def check_params(cls, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The resolved params for ``params``: ``defaults`` merged in, then the epoch counts, ``choices`` and
        ``validate`` checked.  Cheap (no data, no networks): the config check calls it for every method the run
        trains, and each method's ``__init__`` builds from its result.

        Raises:
            UnknownParamsError, ParamError, ValueError: a key the method lacks, or a value that cannot work.
        """
        resolved = merge_params(cls.label, params, cls.defaults)
        check_epoch_counts(cls.label, resolved, cls.epoch_params)
        for key, allowed in cls.choices.items():
            if resolved[key] not in allowed:
                raise ParamError(cls.label, key, resolved[key], f"must be one of {', '.join(allowed)}")
        cls.validate(resolved)
        return resolved

    @classmethod
    def validate(cls, params: Mapping[str, Any]) -> None:
        """Raise ``ParamError`` (or ``ValueError``) when a value of the merged ``params`` cannot work in a way
        ``choices`` and the epoch counts do not cover."""

    @classmethod
    def inputs(cls, params: Mapping[str, Any]) -> frozenset[str]:
        """What a fit with the resolved ``params`` reads: ``features`` (the cache), ``images`` (the split's
        pixels) and ``backbone`` (the frozen network itself, which the runner then sets as
        ``method.feature_extractor`` before ``fit``: a callable mapping images to the cached levels)."""
        return frozenset({"features"})

    @classmethod
    def ablation(cls, params: Mapping[str, Any]) -> str | None:
        """The Table 4 row an entry with these params is (an ablation of the method), or ``None`` for the
        method itself: Tables 2 and 3 list by default every method of ``run.methods`` that is not one."""
        return None

    @classmethod
    def passes(cls, params: Mapping[str, Any]) -> int:
        """Passes over the training data of one fit with the resolved ``params`` (``make estimate``
        multiplies a measured seconds-per-pass by it): ``epochs`` if it counts them, else 1."""
        return int(params["epochs"]) if "epochs" in cls.epoch_params else 1

    @classmethod
    def monitor_interval(cls, params: Mapping[str, Any]) -> int:
        """Epochs between scorings of the test split while training (0: never); > 0 only for a method that
        ``monitors_test``.  The runner hands such a method the test split; ``make estimate`` counts the
        extra test passes."""
        return 0
