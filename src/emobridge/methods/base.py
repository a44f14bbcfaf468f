"""The adaptation-method contract shared by every method, the runner and the reports.

A method is a scikit-learn-like estimator: every parameter in ``__init__`` (stored under the
same name, no other work there), learned state in attributes ending in ``_`` set by
:meth:`AdaptationMethod.fit`. Every method takes the same ``fit`` arguments, so experiments
and reports never special-case one; a method that does not use some input ignores it.
"""

from __future__ import annotations

import inspect
import numbers
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from emobridge.errors import ConfigError
from emobridge.methods.data import EmotionData
from emobridge.registry import Registry


class AdaptationMethod(ABC):
    """Base class of source -> target adaptation methods."""

    #: Registry name (``source_only``, ``nnpm``...).
    name: ClassVar[str]
    #: ``True`` for methods that train on every labelled target utterance (the supervised
    #: upper bound) rather than on the ``k`` few-shot ones; the cell pipeline reads it.
    needs_target_labels: ClassVar[bool] = False
    #: The extractor spec a method is designed for (``emobridge train`` uses it when no
    #: ``-e`` is given); ``None``: any features.
    default_features: ClassVar[str | None] = None

    @abstractmethod
    def fit(
        self,
        source: EmotionData,
        target_unlabelled: EmotionData | None = None,
        target_labelled: EmotionData | None = None,
        validation: EmotionData | None = None,
    ) -> AdaptationMethod:
        """Train.

        Parameters
        ----------
        source:
            Labelled source-language data.
        target_unlabelled:
            Target-language data whose labels the method must not read (their labels are
            :data:`~emobridge.methods.data.UNLABELLED`).
        target_labelled:
            Optional few labelled target utterances (few-shot) or, for the supervised upper
            bound, all labelled target training data.
        validation:
            Optional labelled data for early stopping and model selection.
        """

    @abstractmethod
    def predict_proba(self, data: EmotionData) -> np.ndarray:
        """Class probabilities, shape ``(len(data), n_classes)``, rows summing to 1."""

    def predict(self, data: EmotionData) -> np.ndarray:
        """Most probable class index per utterance."""
        return np.asarray(self.predict_proba(data)).argmax(axis=1)

    @abstractmethod
    def embed(self, data: EmotionData) -> np.ndarray:
        """The representation the classifier sees, ``(len(data), d)``, for plots."""

    def fit_report(self) -> dict[str, Any]:
        """JSON-ready choices the last :meth:`fit` made from the data (e.g. a fallback and
        the statistics behind it); recorded in a cell's results and a bundle's card. Empty
        for methods that make none."""
        return dict(getattr(self, "fit_report_", {}) or {})

    def save(self, directory: str | Path) -> Path:
        """Write ``method.json`` and ``model.safetensors`` (the method's ``get_state``) to
        ``directory``, atomically per file; nothing is pickled."""
        from emobridge.methods.state import method_state, save_method_files

        return save_method_files(directory, *method_state(self))

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> AdaptationMethod:
        """Rebuild a method written by :meth:`save` (its ``from_state``); ``device``
        overrides the saved one where the method has a device. A model bundle is loaded by
        its own layer (``emobridge.inference.load_bundle(folder).method``): a method knows no
        bundle."""
        from emobridge.errors import EmobridgeError
        from emobridge.methods.state import read_method_files

        directory = Path(directory)
        if not (directory / "method.json").exists() and (directory / "bundle.json").exists():
            raise EmobridgeError(f"{directory} is a model bundle, not a saved method: load it "
                                 "with emobridge.inference.load_bundle(folder).method")
        return cls.from_state(*read_method_files(directory), device=device)

    @classmethod
    def param_names(cls) -> list[str]:
        """Constructor parameters, read from the signature of ``__init__`` (explicit
        keyword parameters only, as scikit-learn requires)."""
        sig = inspect.signature(cls.__init__)
        return [name for name, p in sig.parameters.items() if name != "self"
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def _store_params(self, values: Mapping[str, Any]) -> None:
        """Store every constructor parameter under its own name and do nothing else (call
        as ``self._store_params(locals())`` from ``__init__``)."""
        for name in self.param_names():
            setattr(self, name, values[name])

    def check_param_types(self) -> None:
        """Every parameter against its annotation (numbers, strings, booleans, ``None``,
        ``Literal`` choices, mappings, sequences): a mismatch raises :class:`ConfigError`
        naming the parameter, e.g. ``epochs='abc'`` from a command line."""
        hints = typing.get_type_hints(type(self).__init__)
        for name, value in self.get_params().items():
            hint = hints.get(name, Any)
            if not _matches(value, hint):
                raise ConfigError(f"{self.name}: parameter {name}={value!r} should be "
                                  f"{_describe_hint(hint)}")

    def check_settings(self) -> None:
        """Check every parameter before any data is read (types, then the method's own
        rules); a bad value raises :class:`ConfigError`. ``fit`` runs it, and so does config
        validation, so a shipped or user config fails before hours of extraction."""
        self.check_param_types()

    def check_features(self, output: Literal["frames", "vector"], dim: int | None) -> None:
        """Refuse features this method cannot use, before any data is read: ``output`` is
        the extractor's kind (``"frames"``: a frames x dims matrix per utterance,
        ``"vector"``: one vector), ``dim`` its width when the extractor knows it without
        loading a model, else ``None`` (check only what is known). Cheap and data-free;
        config validation calls it for every (method, feature) pair of the grid. Raises
        :class:`ConfigError` with one line naming the reason; the default accepts all.
        ``fit`` keeps its own checks on the actual data."""
        return None  # any features

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters (as scikit-learn's ``get_params``)."""
        return {k: getattr(self, k) for k in self.param_names()}

    def set_params(self, **params: Any) -> AdaptationMethod:
        """Change constructor parameters; an unknown name raises :class:`ConfigError`."""
        valid = set(self.param_names())
        for key, value in params.items():
            if key not in valid:
                raise ConfigError(f"{self.name}: unknown parameter {key!r}; "
                                  f"valid: {sorted(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (unknown kinds of hint: yes)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return any(value == choice and type(value) is type(choice)
                   for choice in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if hint is str:
        return isinstance(value, str)
    if isinstance(origin, type):  # Mapping[str, Any], Sequence[int]...
        return isinstance(value, origin) and not isinstance(value, str)
    return True


def _describe_hint(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe_hint(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if hint is None or hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    return getattr(origin or hint, "__name__", str(hint))


_METHODS: Registry[type[AdaptationMethod]] = Registry("method", "emobridge.methods")

#: Class decorator adding a method to the registry under ``cls.name``.
register_method = _METHODS.register


def available_methods() -> dict[str, type[AdaptationMethod]]:
    """Registered methods by name (importing :mod:`emobridge.methods` registers built-ins)."""
    return _METHODS.available()


def build_method(name: str, **params: Any) -> AdaptationMethod:
    """Instantiate a registered method; an unknown name raises :class:`UnknownNameError`, an
    unknown parameter :class:`ConfigError`."""
    cls = _METHODS.get(name)
    unknown = set(params) - set(cls.param_names())
    if unknown:
        raise ConfigError(
            f"method {name!r}: unknown parameters {sorted(unknown)}; valid: {cls.param_names()}"
        )
    return cls(**params)
