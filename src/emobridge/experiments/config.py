"""The experiment config: a YAML file validated by pydantic models (unknown keys are errors).

A config names the corpora, the label set, the protocol (speaker splits, source -> target
pairs, few-shot sizes), the feature extractors, the methods with their parameters, the seeds,
the device and the output folder. :func:`load_config` reads and validates it; every error
names the file and the key path, e.g. ``config.yaml: methods.0.params.lr: Input should be a
valid number``. Relative paths are relative to the config file (corpus paths to
``corpora_root`` when it is set). Everything downstream uses typed attribute access on
these models.

Example::

    name: emodb-to-emovo
    corpora:
      - {id: emodb, reader: emodb, path: ../../shared/corpora/emodb}
      - {id: emovo, reader: emovo, path: ../../shared/corpora/emovo}
    taxonomy: {label_set: 4class}
    protocol:
      pairs: [{source: emodb, target: emovo}]
      target_split: {train: 0.6, validation: 0.2, test: 0.2}
      few_shot: [0, 25]
    features: {extractors: ["logmel"]}
    methods:
      - {name: source_only, method: source_only, params: {epochs: 20}}
    seeds: [0, 1, 2]
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from emobridge.errors import ConfigError, EmobridgeError

if typing.TYPE_CHECKING:
    from emobridge.methods.base import AdaptationMethod

#: Readers the runner handles itself (besides the registered corpus readers).
SPECIAL_READERS = ("synthetic", "manifest")
#: Method parameters the runner sets (from ``seeds`` and ``device``); configs may not.
RESERVED_METHOD_PARAMS = ("seed", "device")

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _check_id(value: str, what: str) -> str:
    """``value`` if it is safe as one path component (it names folders and table rows)."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"{what} {value!r} must be letters, digits and _ . + - "
                         "(it names folders and table rows)")
    return value


def check_name(value: str, what: str) -> str:
    """:func:`_check_id` for code outside the schema: a :class:`ConfigError` naming the
    value (e.g. a language code a corpus reader reported)."""
    try:
        return _check_id(value, what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class SyntheticOptions(_Model):
    """Options of a ``reader: synthetic`` corpus
    (see :func:`emobridge.synthetic.generate_corpus`)."""

    languages: list[str] = Field(default_factory=lambda: ["aa", "bb"], min_length=1)
    speakers_per_language: int = Field(6, ge=1)
    utterances_per_speaker_per_emotion: int = Field(4, ge=1)
    emotions: list[str] = Field(
        default_factory=lambda: ["anger", "happiness", "neutral", "sadness"], min_length=2)
    sample_rate_hz: int = Field(16_000, ge=8_000)
    seed: int = Field(0, ge=0)

    @field_validator("languages")
    @classmethod
    def _languages(cls, v: list[str]) -> list[str]:
        return [_check_id(x, "language") for x in v]


class CorpusConfig(_Model):
    """One corpus.

    ``reader`` is a registered reader (``emodb``, ``ravdess``, ``folder``...), ``manifest``
    (``path`` is a manifest file written by ``emobridge corpora scan``) or ``synthetic``
    (generated into ``path``, default ``<output_dir>/synthetic/<id>``, when absent).
    ``language`` overrides the language the reader reports; ``options`` go to the reader's
    constructor (for ``synthetic``: :class:`SyntheticOptions`). ``strict`` makes unusable
    files an error instead of a counted, reported skip. ``mapping`` renames this corpus's
    emotions before the taxonomy's label set and global mapping apply (``calm: neutral``
    here, while another corpus's ``calm`` stays outside the set); ``null`` drops one.
    """

    id: str = Field(validation_alias=AliasChoices("id", "name"))
    reader: str
    path: Path | None = None
    language: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    strict: bool = False
    mapping: dict[str, str | None] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # ``- synthetic: {...}`` is short for ``{id: synthetic, reader: synthetic, options}``.
        if isinstance(data, dict) and set(data) == {"synthetic"}:
            options = data["synthetic"] or {}
            if not isinstance(options, dict):
                return data
            options = dict(options)
            cid = options.pop("id", "synthetic")
            path = options.pop("path", None)
            out = {"id": cid, "reader": "synthetic", "options": options}
            if path is not None:
                out["path"] = path
            return out
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _check_id(v, "corpus id")

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        return None if v is None else _check_id(v, "language")

    @model_validator(mode="after")
    def _reader_needs(self) -> CorpusConfig:
        if self.reader == "synthetic":
            SyntheticOptions.model_validate(self.options)
        elif self.path is None:
            raise ValueError(f"corpus {self.id!r}: 'path' is required for reader {self.reader!r}")
        return self

    @property
    def synthetic_options(self) -> SyntheticOptions:
        """Validated options of a synthetic corpus."""
        return SyntheticOptions.model_validate(self.options)


class TaxonomyConfig(_Model):
    """The label set: a named one (``4class``...) or an explicit list of canonical emotions,
    a mapping of further emotions into it (``calm: neutral``) and what to do with the rest
    (``drop``: counted and reported, or ``error``)."""

    label_set: str | list[str] = "4class"
    mapping: dict[str, str] = Field(default_factory=dict)
    policy: Literal["drop", "error"] = "drop"

    def build(self):  # -> LabelSet (import kept local: taxonomy imports pandas)
        from emobridge.corpora.taxonomy import LabelSet

        if isinstance(self.label_set, str):
            return LabelSet.named(self.label_set, self.mapping, self.policy)
        return LabelSet(tuple(self.label_set), dict(self.mapping), self.policy)


class SplitRatios(_Model):
    """Shares of *speakers* per partition (normalised by their sum; 0 = empty partition)."""

    train: float = Field(ge=0)
    validation: float = Field(0.0, ge=0)
    test: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _not_all_zero(self) -> SplitRatios:
        if self.train + self.validation + self.test <= 0:
            raise ValueError("train, validation and test cannot all be 0")
        return self

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.train, self.validation, self.test)


class PairConfig(_Model):
    """One source -> target task. Values are corpus ids (``domain: corpus``) or language
    codes (``domain: language``); a list of sources trains on all of them."""

    source: str | list[str]
    target: str
    name: str | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    @model_validator(mode="after")
    def _distinct(self) -> PairConfig:
        if not self.sources:
            raise ValueError("source is empty")
        if self.target in self.sources:
            raise ValueError(f"target {self.target!r} is also a source")
        if self.name is not None:
            _check_id(self.name, "pair name")
        return self


def _few_shot_sizes(sizes: list[int | str]) -> list[int | str]:
    """Few-shot sizes checked: utterance counts >= 0 or seconds as ``"150s"`` (digit strings
    become counts), distinct."""
    from emobridge.protocols import ProtocolError, parse_few_shot

    out: list[int | str] = []
    for k in sizes:
        k = int(k) if isinstance(k, str) and k.isdigit() else k
        try:
            kind, _ = parse_few_shot(k)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
        if kind == "all":
            raise ValueError("few-shot size 'all' is target_labels: all, not a few_shot size")
        out.append(k)
    if len(set(out)) != len(out):
        raise ValueError(f"few-shot sizes listed twice: {sizes}")
    return out


class ProtocolConfig(_Model):
    """Who is source and target, how speakers are split, how many target labels.

    ``pairs``: a list of source -> target pairs, ``all_pairs`` (every ordered pair of
    domains), ``leave_one_out`` (each domain is the target once, all others the source) or
    ``leave_one_language_out`` (``leave_one_out`` with ``domain: language``) or
    ``all_pairs_and_leave_one_out`` (both; with two domains the two coincide, so pairs only).
    Source speakers are split with ``source_split`` (default: 80 % train, 20 % validation,
    as ``emobridge train``; a test share gives the source-language UA), target speakers
    with ``target_split`` into train (the unlabelled pool and where few-shot labels are
    drawn from), validation and test. ``validation`` chooses the labelled data passed to
    methods for early stopping (default ``source``: held-out source speakers, so no target
    label is read).
    ``few_shot`` lists the numbers of labelled target utterances (in total, drawn as equally
    per class as possible, see :func:`emobridge.protocols.few_shot_subset`) or amounts of
    labelled target speech in seconds (``"150s"``: the shortest such draw reaching 150 s,
    :func:`emobridge.protocols.few_shot_seconds`). ``target_folds: N`` rotates the target
    speakers over ``N`` speaker folds (:func:`emobridge.protocols.speaker_folds`): each cell
    fits once per fold (test on fold ``i``, validation on fold ``i + 1`` when
    ``target_split.validation > 0``, the rest is the target training pool; the target
    split's ratios are otherwise unused) and is scored on the pooled predictions, so every
    target utterance is tested exactly once per seed; per-fold scores go to ``folds`` in
    ``metrics.json``. ``split_seed``
    fixes the speaker split; ``null`` (default) re-splits with each run seed, so the spread
    over seeds includes the choice of speakers.
    """

    domain: Literal["corpus", "language"] = "corpus"
    pairs: list[PairConfig] | Literal["all_pairs", "leave_one_out", "leave_one_language_out",
                                      "all_pairs_and_leave_one_out"] = "all_pairs"
    source_split: SplitRatios = Field(
        default_factory=lambda: SplitRatios(train=0.8, validation=0.2))
    target_split: SplitRatios = Field(
        default_factory=lambda: SplitRatios(train=0.6, validation=0.2, test=0.2))
    validation: Literal["source", "target", "both", "none"] = "source"
    few_shot: list[int | str] = Field(default_factory=lambda: [0], min_length=1)
    target_folds: int | None = Field(None, ge=2)
    split_seed: int | None = Field(None, ge=0)
    stratify_by: str | None = "gender"
    max_source_points: int = Field(
        400, ge=0, description="source utterances embedded for plots when no source test")

    @model_validator(mode="before")
    @classmethod
    def _lolo(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("pairs") == "leave_one_language_out":
            if data.get("domain", "language") != "language":
                raise ValueError("pairs: leave_one_language_out needs domain: language")
            data = {**data, "pairs": "leave_one_out", "domain": "language"}
        return data

    @field_validator("few_shot")
    @classmethod
    def _few_shot(cls, v: list[int | str]) -> list[int | str]:
        return _few_shot_sizes(v)

    @model_validator(mode="after")
    def _target_test(self) -> ProtocolConfig:
        if self.target_split.test <= 0:
            raise ValueError("target_split.test must be > 0: the target test speakers are "
                             "what every cell is evaluated on")
        return self


class ExtractorConfig(_Model):
    """An extractor as a dict: ``{name: logmel, params: {...}, label: short-name}``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return None if v is None else _check_id(v, "extractor label")


class FeaturesConfig(_Model):
    """Extractors (spec strings such as ``"logmel:n_mels=64"`` or dicts) and the store."""

    extractors: list[str | ExtractorConfig] = Field(min_length=1)
    store: Path | None = None

    def specs(self) -> list[FeatureSpec]:
        """One :class:`FeatureSpec` per extractor, with unique labels."""
        from emobridge.features.registry import parse_spec

        out: list[FeatureSpec] = []
        for item in self.extractors:
            if isinstance(item, str):
                name, params = parse_spec(item)
                label = None
            else:
                name, params, label = item.name, dict(item.params), item.label
            out.append(FeatureSpec(name=name, params=params, label=label or name))
        labels = [s.label for s in out]
        if len(set(labels)) != len(labels):
            # Several variants of one extractor: label them by index.
            seen: dict[str, int] = {}
            for s in out:
                if labels.count(s.label) > 1:
                    seen[s.label] = seen.get(s.label, 0) + 1
                    s.label = f"{s.label}{seen[s.label]}"
        return out


class FeatureSpec(BaseModel):
    """A resolved extractor spec with the label used in cell ids and tables."""

    name: str
    params: dict[str, Any]
    label: str

    def as_spec(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}


class MethodConfig(_Model):
    """A method to run. ``name`` labels it in tables (default: ``method``); ``params`` go to
    the constructor (checked against its signature). ``target_labels``: ``few_shot`` runs
    once per few-shot size (``few_shot`` here, else ``protocol.few_shot``), ``none`` once
    with no target labels (k = 0; e.g. the cross-lingual lower bound), ``all`` once with
    every target training label (the multilingual upper bound). ``features``: the labels of
    the extractors this method runs on (default: every one), e.g. a random forest on
    functionals only and encoder fine-tuning on frames only."""

    name: str | None = None
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    target_labels: Literal["few_shot", "none", "all"] = "few_shot"
    few_shot: list[int | str] | None = None
    features: list[str] | None = Field(None, min_length=1)

    @field_validator("few_shot")
    @classmethod
    def _few_shot(cls, v: list[int | str] | None) -> list[int | str] | None:
        if v is not None and not v:
            raise ValueError("few_shot must list at least one size")
        return None if v is None else _few_shot_sizes(v)

    @model_validator(mode="after")
    def _label(self) -> MethodConfig:
        if self.name is None:
            self.name = self.method
        _check_id(self.name, "method name")
        reserved = sorted(set(self.params) & set(RESERVED_METHOD_PARAMS))
        if reserved:
            raise ValueError(f"params {reserved} are set by the runner (use the top-level "
                             "'seeds' and 'device')")
        if self.few_shot is not None and self.target_labels != "few_shot":
            raise ValueError(f"few_shot is only used with target_labels: few_shot, not "
                             f"{self.target_labels!r}")
        return self

    @property
    def label(self) -> str:
        return self.name or self.method


class ReportConfig(_Model):
    """What the report draws: embedding plots (PCA and t-SNE of ``embed()`` for the first
    seed of each group, at most ``max_points`` utterances), and bootstrap resamples."""

    embeddings: bool = True
    tsne: bool = True
    max_points: int = Field(600, ge=10)
    max_embedding_plots: int = Field(24, ge=0)
    bootstrap: int = Field(1000, ge=0)


class ExperimentConfig(_Model):
    """A whole experiment (see the module docstring for an example)."""

    name: str | None = None
    description: str = ""
    corpora_root: Path | None = None
    corpora: list[CorpusConfig] = Field(min_length=1)
    taxonomy: TaxonomyConfig = Field(default_factory=TaxonomyConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    features: FeaturesConfig
    methods: list[MethodConfig] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: str = "auto"
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads per cell (default: CPU cores / jobs)")
    output_dir: Path | None = None
    executor: Literal["local", "ray"] = Field(
        "local", description="where cells run: local processes (--jobs) or Ray tasks")
    address: str | None = Field(
        None, description="Ray cluster address for executor: ray (auto, ray://HOST:PORT or "
        "HOST:PORT; default: a local Ray instance)")
    skip_errors: bool = Field(
        False, description="skip (count and report) audio files that cannot be decoded "
        "instead of stopping the run")
    save_models: bool = Field(
        False, description="write each cell's fitted method as a model bundle in "
        "cells/<cell>/model (emobridge predict --model that folder)")
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("output_dir", mode="before")
    @classmethod
    def _output_dir(cls, v: Any) -> Any:
        if v is not None and str(v).strip() in ("", "."):
            raise ValueError(f"{str(v)!r} is not a dedicated folder; name a new folder for "
                             "the results (e.g. runs/my-experiment)")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        from emobridge.runtime import MAX_SEED

        if any(not 0 <= s <= MAX_SEED for s in v):
            raise ValueError(f"seeds must be in 0 .. {MAX_SEED}, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"a seed is listed twice: {v}")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        from emobridge.raycluster import ADDRESS_RE

        if v is not None and not ADDRESS_RE.match(v):
            raise ValueError(f"expected auto, ray://HOST:PORT or HOST:PORT, got {v!r}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.match(r"^(cpu|auto|mps|cuda(:\d+)?)$", v):
            raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got {v!r}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        ids = [c.id for c in self.corpora]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"corpora: id {dup[0]!r} is used twice")
        names = [m.label for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"methods: name {dup[0]!r} is used twice; give each a 'name'")
        if self.name is not None:
            _check_id(self.name, "experiment name")
        labels = [f.label for f in self.feature_specs]
        for m in self.methods:
            unknown = sorted(set(m.features or ()) - set(labels))
            if unknown:
                raise ValueError(f"methods: {m.label!r} lists features {unknown} that are not "
                                 f"extractor labels ({', '.join(labels)})")
        return self

    # ------------------------------------------------------------------ derived values

    @property
    def feature_specs(self) -> list[FeatureSpec]:
        return self.features.specs()

    def method(self, label: str) -> MethodConfig:
        for m in self.methods:
            if m.label == label:
                return m
        raise KeyError(label)

    def feature(self, label: str) -> FeatureSpec:
        for f in self.feature_specs:
            if f.label == label:
                return f
        raise KeyError(label)

    def corpus(self, cid: str) -> CorpusConfig:
        for c in self.corpora:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def to_yaml(self) -> str:
        """The config as YAML (paths as strings, defaults filled in)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False,
                              allow_unicode=True)

    def digest(self, part: Any) -> str:
        """Short stable hash of a JSON-able value (cells use it to detect changed configs)."""
        blob = json.dumps(part, sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:16]


# ---------------------------------------------------------------------- loading


#: deepest nesting of mappings / lists a config may have
MAX_YAML_DEPTH = 64
#: most nodes a config may expand to once aliases (``*name``) are followed
MAX_YAML_NODES = 100_000
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus: a key given twice in one mapping is an error (PyYAML
    keeps the last), nesting is capped at :data:`MAX_YAML_DEPTH` (deeper input would end in
    a ``RecursionError``), and see :func:`read_yaml` for the alias-expansion cap."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _ConfigLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor`` may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes that ``node`` stands for once every alias is followed (an alias is the same
    node object as its anchor, so a "billion laughs" document is small as a graph but huge
    here). Memoised by node identity: linear in the graph's size."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a cycle (impossible in YAML 1.1 composition) counts once
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1 + sum(_expanded_size(c, memo) for c in children)
    memo[id(node)] = total
    return total


def read_yaml(text: str, source: str) -> Any:
    """Parse a YAML document safely: no Python objects, no duplicate keys, nesting capped
    at :data:`MAX_YAML_DEPTH`, alias expansion capped at :data:`MAX_YAML_NODES` nodes.
    Every refusal is a :class:`ConfigError` naming ``source`` (and the line where known)."""
    loader = None
    try:
        loader = _ConfigLoader(text)  # refuses control characters already (a ReaderError)
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise ConfigError(f"{source}: the config expands to {size} values through aliases "
                              f"(*name); at most {MAX_YAML_NODES} are allowed")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def expand_env(data: Any, source: str, where: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value of ``data`` by the
    environment variable (or the default, as in shells). An unset variable without a default
    raises :class:`ConfigError` naming it and the key."""
    if isinstance(data, dict):
        return {k: expand_env(v, source, f"{where}.{k}" if where else str(k))
                for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, source, f"{where}.{i}" if where else str(i))
                for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(f"{source}: {where}: environment variable {name} is not set "
                                  f"(write ${{{name}:-default}} to give a default)")
            return default
        return value

    return _ENV_REF.sub(substitute, data)


def _model_names() -> set[str]:
    """Names of this module's config models: pydantic tags union members with them."""
    return {m.__name__ for m in (_Model, *_Model.__subclasses__())}


def _loc(parts: tuple[Any, ...]) -> str:
    """``('methods', 0, 'params', 'lr')`` -> ``methods.0.params.lr``, without pydantic's
    union-member tags (``list[PairConfig]``, ``function-after[...]``, ``ExtractorConfig``)."""
    tags = _model_names() | {"str", "int", "float", "bool", "dict", "list", "none"}
    return ".".join(str(p) for p in parts
                    if not (isinstance(p, str) and ("[" in p or p in tags)))


def format_validation_error(exc: ValidationError, source: str, prefix: str = "") -> str:
    """One line per problem: ``source: key.path: message`` (duplicates from unions merged;
    a union member's bare type mismatch is dropped when another member says more about a
    key inside the value)."""
    errors = [(_loc(tuple(err["loc"])), err) for err in exc.errors(include_url=False)]
    lines: list[str] = []
    seen: set[str] = set()
    for loc, err in errors:
        if err["type"].endswith("_type") and any(
                other.startswith(loc + ".") for other, _ in errors):
            continue
        if prefix:
            loc = f"{prefix}.{loc}" if loc else prefix
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        line = f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}"
        if loc in seen and err["type"] not in ("extra_forbidden", "missing"):
            continue
        seen.add(loc)
        lines.append(line)
    return "\n".join(lines)


def _init_parameters(cls: type) -> list[tuple[str, inspect.Parameter, Any]]:
    """Keyword parameters of ``cls``'s constructor with their type hints, following
    ``**kwargs`` up the class hierarchy (``NeuralMethod`` subclasses forward them)."""
    out: list[tuple[str, inspect.Parameter, Any]] = []
    seen: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        init = vars(klass)["__init__"]
        sig = inspect.signature(init)
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # unresolvable forward references: fall back to unchecked types
            hints = {}
        forwards = False
        for pname, param in sig.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
                continue
            if pname == "self" or param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            if pname not in seen:
                seen.add(pname)
                out.append((pname, param, hints.get(pname, Any)))
        if not forwards:
            break
    return out


def _signature_model(cls: type, skip: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic model of ``cls``'s constructor parameters (types from the hints)."""
    fields: dict[str, Any] = {}
    for pname, param, annotation in _init_parameters(cls):
        if pname in skip:
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (annotation, default)
    return create_model(
        f"{cls.__name__}Params",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


def _check_params(cls: type, params: dict[str, Any], prefix: str, source: str,
                  errors: list[str], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Validate ``params`` against ``cls``'s constructor; return them coerced
    (``"1e-3"`` -> ``0.001``). Missing required parameters are not errors here."""
    model = _signature_model(cls, skip)
    required = [n for n, f in model.model_fields.items() if f.is_required()]
    filler = {n: None for n in required if n not in params}
    try:
        checked = model.model_validate({**params, **filler})
    except ValidationError as exc:
        problems = [
            e for e in exc.errors(include_url=False)
            if not (e["loc"] and e["loc"][0] in filler)
        ]
        if problems:
            errors.append(format_validation_error(
                ValidationError.from_exception_data(exc.title, problems), source, prefix))
        return params
    return {k: getattr(checked, k) for k in params}


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = Path(str(path)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def validate_config(
    data: Any,
    source: str = "config",
    base_dir: str | os.PathLike[str] | None = None,
    check_registries: bool = True,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    corpora_root: str | os.PathLike[str] | None = None,
) -> ExperimentConfig:
    """Validate a config mapping; resolve relative paths against ``base_dir``.

    ``check_registries`` also checks reader, extractor and method names, the method
    and reader parameters against their constructors (this imports the methods, i.e.
    torch), the extractors' parameters (built on the CPU, no model loaded) and every
    (method, feature) pair the grid runs against the method's ``check_features`` (a
    refusal names ``methods.N.features``). ``output_dir``, ``device`` and ``corpora_root``
    override the config's values (command-line options; relative paths there are relative
    to the current folder).
    Raises :class:`ConfigError` with one ``source: key.path: message`` line per problem.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys, "
                          f"got {type(data).__name__}")
    data = dict(data)
    if output_dir is not None:
        if str(output_dir).strip() == "":
            raise ConfigError("--out: empty path; name a dedicated folder for the results")
        data["output_dir"] = str(Path(output_dir).expanduser().resolve())
    if corpora_root is not None:
        data["corpora_root"] = str(Path(corpora_root).expanduser().resolve())
    if device is not None:
        data["device"] = device
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    base = base.resolve()
    if cfg.name is None:
        stem = Path(source).stem if source.endswith((".yaml", ".yml")) else "experiment"
        cfg.name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", stem).strip("-.") or "experiment"
    cfg.corpora_root = _resolve(cfg.corpora_root, base)
    cfg.output_dir = _resolve(cfg.output_dir, base) or (base / "runs" / cfg.name).resolve()
    if cfg.output_dir == base and base_dir is not None:
        raise ConfigError(f"{source}: output_dir: {cfg.output_dir} is the config's own folder; "
                          "name a dedicated folder for the results")
    cfg.features.store = _resolve(cfg.features.store, base) or cfg.output_dir / "features"
    corpus_base = cfg.corpora_root or base
    for c in cfg.corpora:
        if c.path is None:
            c.path = cfg.output_dir / "synthetic" / c.id
        else:
            c.path = _resolve(c.path, corpus_base)
    errors: list[str] = []
    _check_pairs(cfg, source, errors)
    if check_registries:
        _check_registries(cfg, source, errors)
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg


def _check_pairs(cfg: ExperimentConfig, source: str, errors: list[str]) -> None:
    p = cfg.protocol
    if isinstance(p.pairs, str):
        if p.domain == "corpus" and len(cfg.corpora) < 2 and p.pairs in (
                "all_pairs", "leave_one_out", "all_pairs_and_leave_one_out"):
            errors.append(f"{source}: protocol.pairs: {p.pairs} with domain: corpus needs at "
                          f"least two corpora (or use domain: language)")
        return
    ids = {c.id for c in cfg.corpora}
    names = set()
    for i, pair in enumerate(p.pairs):
        if p.domain == "corpus":
            for key, values in (("source", pair.sources), ("target", (pair.target,))):
                for v in values:
                    if v not in ids:
                        errors.append(f"{source}: protocol.pairs.{i}.{key}: unknown corpus "
                                      f"{v!r}; corpora are {sorted(ids)}")
        name = pair.name or task_name(pair.sources, pair.target)
        if name in names:
            errors.append(f"{source}: protocol.pairs.{i}: pair {name!r} is listed twice")
        names.add(name)


def task_name(sources: tuple[str, ...] | list[str], target: str) -> str:
    """Default name of a source -> target task, e.g. ``emodb-to-emovo``."""
    return f"{'+'.join(sources)}-to-{target}"


def _check_registries(cfg: ExperimentConfig, source: str, errors: list[str]) -> None:
    from emobridge.corpora.base import available_readers
    from emobridge.errors import FeatureError
    from emobridge.features.registry import available_extractors, parse_spec

    readers = available_readers()
    for i, c in enumerate(cfg.corpora):
        if c.reader in SPECIAL_READERS:
            continue
        if c.reader not in readers:
            errors.append(f"{source}: corpora.{i}.reader: unknown reader {c.reader!r}; known: "
                          f"{', '.join([*readers, *SPECIAL_READERS])}")
            continue
        c.options = _check_params(readers[c.reader], c.options, f"corpora.{i}.options",
                                  source, errors, skip=("root",))
    extractors = available_extractors()
    for i, item in enumerate(cfg.features.extractors):
        try:
            name = parse_spec(item)[0] if isinstance(item, str) else item.name
        except FeatureError as exc:
            errors.append(f"{source}: features.extractors.{i}: {exc}")
            continue
        if name not in extractors:
            errors.append(f"{source}: features.extractors.{i}: unknown extractor {name!r}; "
                          f"known: {', '.join(extractors) or '(none registered)'}")
    checked = _check_methods(cfg, source, errors)
    if checked:
        _check_method_features(cfg, source, errors, checked)


def _check_methods(cfg: ExperimentConfig, source: str, errors: list[str]
                   ) -> dict[int, AdaptationMethod]:
    """Method names, parameters and each method's own rules; the methods that passed,
    built (no data read), by their index in ``cfg.methods``."""
    from emobridge.methods.base import available_methods

    methods = available_methods()
    built: dict[int, AdaptationMethod] = {}
    for i, m in enumerate(cfg.methods):
        if m.method not in methods:
            errors.append(f"{source}: methods.{i}.method: unknown method {m.method!r}; "
                          f"known: {', '.join(methods) or '(none registered)'}")
            continue
        n_errors = len(errors)
        m.params = _check_params(methods[m.method], m.params, f"methods.{i}.params", source,
                                 errors, skip=RESERVED_METHOD_PARAMS)
        if len(errors) == n_errors:  # types fine: the method's own rules, before any data
            try:
                method = methods[m.method](**m.params)
                method.check_settings()
            except (EmobridgeError, TypeError, ValueError) as exc:
                errors.append(f"{source}: methods.{i}.params: {exc}")
            else:
                built[i] = method
    return built


def _feature_shapes(cfg: ExperimentConfig, source: str, errors: list[str]
                    ) -> dict[str, tuple[str, int | None]]:
    """``label -> (output, dim)`` of every extractor that builds, without loading a model
    (on the CPU: the device does not change the output); a spec whose parameters the
    extractor refuses is an error naming ``features.extractors.N``."""
    from emobridge.features.registry import available_extractors, build_extractor

    known = available_extractors()
    shapes: dict[str, tuple[str, int | None]] = {}
    for i, spec in enumerate(cfg.feature_specs):
        if spec.name not in known:
            continue  # reported above
        params = dict(spec.params)
        if "device" in inspect.signature(known[spec.name].__init__).parameters:
            params["device"] = "cpu"
        try:
            extractor = build_extractor({"name": spec.name, "params": params})
        except (EmobridgeError, TypeError, ValueError) as exc:
            errors.append(f"{source}: features.extractors.{i}: {exc}")
            continue
        shapes[spec.label] = (extractor.output, extractor.dim)
    return shapes


def _check_method_features(cfg: ExperimentConfig, source: str, errors: list[str],
                           methods: dict[int, AdaptationMethod]) -> None:
    """Every (method, feature) pair the grid runs through the method's
    :meth:`~emobridge.methods.base.AdaptationMethod.check_features`: a pair that would fail
    every cell at fit time is an error naming ``methods.N.features`` and the feature."""
    shapes = _feature_shapes(cfg, source, errors)
    for i, method in methods.items():
        m = cfg.methods[i]
        for label, (output, dim) in shapes.items():
            if m.features is not None and label not in m.features:
                continue
            try:
                method.check_features(output, dim)
            except (EmobridgeError, TypeError, ValueError) as exc:
                shape = f"{output}" if dim is None else f"{output} of {dim} dims"
                errors.append(f"{source}: methods.{i}.features: method {m.label!r} cannot run "
                              f"on feature {label!r} ({shape}): {exc}")


def load_config(
    path: str | os.PathLike[str],
    check_registries: bool = True,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    corpora_root: str | os.PathLike[str] | None = None,
) -> ExperimentConfig:
    """Read and validate a YAML config file (relative paths resolved against its folder).

    The keyword arguments override the file's values (see :func:`validate_config`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    data = expand_env(read_yaml(text, str(path)), str(path))
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    return validate_config(data, str(path), path.parent, check_registries,
                           output_dir=output_dir, device=device, corpora_root=corpora_root)
