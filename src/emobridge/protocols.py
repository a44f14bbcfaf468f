"""Speaker-independent evaluation protocols over manifests.

Every function here takes a manifest (a :class:`pandas.DataFrame` with at least the columns
``path``, ``speaker`` and, depending on the function, ``corpus``, ``language``, ``emotion`` or
the stratification column; see :mod:`emobridge.corpora.manifest`) and returns row subsets of
it. Partitions keep the manifest's own index and row order, so ``features[split.test.index]``
picks the matching rows of features computed for a manifest with a default ``RangeIndex``.

Every split is made of whole speakers and is passed through :func:`check_speaker_independence`
before it is returned, so no speaker is ever in two partitions of one split.

Determinism: every random choice uses ``numpy.random.default_rng(seed)`` over speakers (or
rows) in sorted order, so the result depends on the seed and the manifest's content, not on
its row order.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from emobridge.errors import CorpusError, EmobridgeError, SpeakerLeakError
from emobridge.runtime import check_seed

__all__ = [
    "CellRows",
    "CrossCorpusSplit",
    "ProtocolError",
    "Split",
    "apportion",
    "assemble_cell",
    "balance_by_repetition",
    "check_audio_independence",
    "check_speaker_independence",
    "cross_corpus_split",
    "explicit_folds",
    "few_shot_seconds",
    "few_shot_subset",
    "leave_one_out",
    "parse_few_shot",
    "speaker_folds",
    "speaker_split",
]

#: Partition names of a :class:`Split`, in order.
PARTITIONS: tuple[str, ...] = ("train", "validation", "test")

# How many offending speakers a leak message lists before summarising the rest.
_MAX_LISTED = 20


class ProtocolError(EmobridgeError):
    """A split, fold or subset cannot be made as asked (bad ratios, too few speakers...)."""


# --------------------------------------------------------------------------- leak check


def check_speaker_independence(partitions: Mapping[str, pd.DataFrame]) -> None:
    """Raise :class:`SpeakerLeakError` when a speaker occurs in more than one partition.

    Parameters
    ----------
    partitions:
        Partition name -> manifest rows (each needs a ``speaker`` column). Empty partitions
        are fine.

    Raises
    ------
    SpeakerLeakError
        Naming every shared speaker (the first 20, then a count) and the partitions it is in,
        e.g. ``speaker 'emodb:03' is in train, test``.
    CorpusError
        When a partition has no ``speaker`` column.
    """
    where: dict[str, list[str]] = {}
    for name, frame in partitions.items():
        if "speaker" not in frame.columns:
            raise CorpusError(f"partition {name!r} has no 'speaker' column")
        for speaker in sorted(set(frame["speaker"].astype(str))):
            where.setdefault(speaker, []).append(str(name))
    shared = {s: names for s, names in where.items() if len(names) > 1}
    if not shared:
        return
    items = sorted(shared.items())
    listed = "; ".join(f"speaker {s!r} is in {', '.join(n)}" for s, n in items[:_MAX_LISTED])
    more = f"; and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    raise SpeakerLeakError(
        f"{len(items)} speaker(s) shared between partitions: {listed}{more}"
    )


# --------------------------------------------------------------------------- containers


class _Partitions:
    """Shared behaviour of dataclasses whose fields are all manifest partitions."""

    def partitions(self) -> dict[str, pd.DataFrame]:
        """Partition name -> rows, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[pd.DataFrame]:
        return iter(self.partitions().values())

    def check(self) -> None:
        """Raise :class:`SpeakerLeakError` if a speaker is in two partitions."""
        check_speaker_independence(self.partitions())

    def speakers(self) -> dict[str, list[str]]:
        """Partition name -> its sorted speakers."""
        return {name: sorted(set(frame["speaker"].astype(str)))
                for name, frame in self.partitions().items()}

    def describe(self) -> pd.DataFrame:
        """Counts per partition: ``utterances``, ``speakers`` and one column per emotion.

        Emotion columns (present when the partitions have an ``emotion`` column) hold
        utterance counts, 0 where a partition lacks the emotion.
        """
        parts = self.partitions()
        table = pd.DataFrame(
            {"utterances": [len(f) for f in parts.values()],
             "speakers": [f["speaker"].nunique() for f in parts.values()]},
            index=pd.Index(list(parts), name="partition"),
        )
        if all("emotion" in f.columns for f in parts.values()):
            emotions = sorted(set().union(*(set(f["emotion"]) for f in parts.values())))
            for emotion in emotions:
                table[emotion] = [int((f["emotion"] == emotion).sum()) for f in parts.values()]
        return table

    def to_frame(self, column: str = "partition") -> pd.DataFrame:
        """All rows in one frame with a ``column`` naming each row's partition."""
        frames = [f.assign(**{column: name}) for name, f in self.partitions().items()]
        return pd.concat(frames) if frames else pd.DataFrame()


@dataclass(eq=False)
class Split(_Partitions):
    """A speaker-independent train / validation / test split of a manifest.

    ``validation`` may be empty (no rows, same columns). Construction checks speaker
    independence and raises :class:`SpeakerLeakError` on a shared speaker.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, column: str = "partition") -> Split:
        """Inverse of :meth:`to_frame`: rows whose ``column`` is train / validation / test.

        Raises :class:`ProtocolError` naming unknown partition values.
        """
        if column not in frame.columns:
            raise ProtocolError(f"frame has no {column!r} column naming partitions")
        unknown = sorted(set(frame[column].astype(str)) - set(PARTITIONS))
        if unknown:
            raise ProtocolError(f"unknown partition(s) {unknown} in column {column!r}; "
                                f"expected {list(PARTITIONS)}")
        body = frame.drop(columns=[column])
        parts = {name: body[frame[column] == name] for name in PARTITIONS}
        check_speaker_independence(parts)
        return cls(**parts)


@dataclass(eq=False)
class CrossCorpusSplit(_Partitions):
    """The pieces of a source -> target (cross-corpus / cross-lingual) experiment.

    Attributes
    ----------
    source_train:
        Labelled source data to train on (all of the source unless validation speakers
        were held out).
    source_validation:
        Source speakers held out for early stopping (may be empty).
    target_train:
        Target speakers available for adaptation: the unlabelled pool, and the pool that
        few-shot labelled subsets are drawn from (:func:`few_shot_subset`).
    target_validation:
        Target speakers for model selection (may be empty).
    target_test:
        Target speakers reported on; never seen in any other piece.
    source_test:
        Source speakers held out for the source-language score (may be empty; absent means
        empty).
    """

    source_train: pd.DataFrame
    source_validation: pd.DataFrame
    target_train: pd.DataFrame
    target_validation: pd.DataFrame
    target_test: pd.DataFrame
    source_test: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.source_test is None:
            self.source_test = self.source_train.iloc[0:0]
        self.check()


# --------------------------------------------------------------------------- helpers


def _require_columns(manifest: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(manifest, pd.DataFrame):
        raise ProtocolError(f"{what}: expected a manifest DataFrame, got {type(manifest)!r}")
    missing = [c for c in columns if c not in manifest.columns]
    if missing:
        raise CorpusError(f"{what}: manifest lacks column(s) {missing}")
    if "speaker" in columns:
        bad = manifest["speaker"].isna() | (manifest["speaker"].astype(str).str.len() == 0)
        if bad.any():
            row = bad.idxmax()
            path = manifest.loc[row, "path"] if "path" in manifest.columns else "?"
            raise CorpusError(f"{what}: empty speaker in row {row} ({path})")


def _check_ratios(ratios: Sequence[float], names: Sequence[str]) -> np.ndarray:
    r = np.asarray(ratios, dtype=float)
    if r.shape != (len(names),):
        raise ProtocolError(f"ratios must have {len(names)} entries ({', '.join(names)}), "
                            f"got {tuple(ratios)}")
    if not np.all(np.isfinite(r)) or np.any(r < 0) or r.sum() <= 0:
        raise ProtocolError(f"ratios must be finite, non-negative and not all zero, "
                            f"got {tuple(ratios)}")
    return r / r.sum()


def apportion(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` items into integer counts proportional to ``ratios``.

    Rounding: largest remainder (Hamilton) method on ``n * ratio / sum(ratios)``, ties going
    to the earlier entry; then every entry with a non-zero ratio that got 0 takes one item
    from the entry with the most items (earliest on ties). Counts always sum to ``n``; an
    entry with ratio 0 always gets 0.

    Raises :class:`ProtocolError` when ``n`` is smaller than the number of non-zero ratios.
    """
    r = np.asarray(ratios, dtype=float)
    if np.any(r < 0) or r.sum() <= 0:
        raise ProtocolError(f"ratios must be non-negative and not all zero, got {tuple(ratios)}")
    r = r / r.sum()
    nonzero = int(np.count_nonzero(r))
    if n < nonzero:
        raise ProtocolError(f"cannot give each of the {nonzero} non-zero ratios "
                            f"{tuple(float(x) for x in ratios)} at least one of {n} item(s)")
    quota = n * r
    counts = np.floor(quota).astype(int)
    remainder = quota - counts
    # Stable sort on -remainder: ties keep the earlier entry first.
    for i in np.argsort(-remainder, kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in np.flatnonzero((r > 0) & (counts == 0)):
        donor = int(np.argmax(counts))
        counts[donor] -= 1
        counts[i] += 1
    return [int(c) for c in counts]


def _interleave(counts: Sequence[int]) -> np.ndarray:
    """Partition indices, ``counts[p]`` of each, spread evenly (largest running deficit)."""
    counts_arr = np.asarray(counts, dtype=float)
    n = int(counts_arr.sum())
    taken = np.zeros(len(counts_arr))
    out = np.empty(n, dtype=int)
    for i in range(n):
        p = int(np.argmax(counts_arr * (i + 1) / n - taken))
        out[i] = p
        taken[p] += 1
    return out


def _speaker_strata(manifest: pd.DataFrame, stratify_by: str | None,
                    what: str) -> pd.Series:
    """Speaker -> stratum value (sorted by speaker); one stratum when ``stratify_by`` is None."""
    speakers = np.unique(manifest["speaker"].astype(str).to_numpy())
    if stratify_by is None:
        return pd.Series("", index=speakers, dtype=object)
    if stratify_by not in manifest.columns:
        raise ProtocolError(f"{what}: manifest has no column {stratify_by!r} to stratify by; "
                            "pass stratify_by=None")
    values = manifest[stratify_by].fillna("").astype(str)
    per_speaker = values.groupby(manifest["speaker"].astype(str)).unique()
    mixed = per_speaker[per_speaker.map(len) > 1]
    if len(mixed):
        s = mixed.index[0]
        raise ProtocolError(f"{what}: speaker {s!r} has several {stratify_by!r} values "
                            f"{sorted(mixed.iloc[0])}; cannot stratify speakers by it")
    return per_speaker.map(lambda v: v[0]).reindex(speakers).astype(object)


def _ordered_speakers(strata: pd.Series, rng: np.random.Generator) -> list[str]:
    """Speakers grouped by stratum (strata in random order), random order within each."""
    groups = sorted(set(strata))
    order: list[str] = []
    for g in rng.permutation(len(groups)):
        members = strata.index[strata == groups[g]].to_numpy()
        order.extend(str(s) for s in members[rng.permutation(len(members))])
    return order


def _assign_speakers(manifest: pd.DataFrame, ratios: np.ndarray, seed: int,
                     stratify_by: str | None, names: Sequence[str],
                     what: str) -> dict[str, pd.DataFrame]:
    """Core of :func:`speaker_split`: speakers -> partitions with exact total counts."""
    strata = _speaker_strata(manifest, stratify_by, what)
    n = len(strata)
    try:
        counts = apportion(n, ratios)
    except ProtocolError:
        need = int(np.count_nonzero(ratios))
        shown = dict(zip(names, (round(float(x), 4) for x in ratios), strict=True))
        raise ProtocolError(
            f"{what}: manifest has {n} speaker(s) but ratios {shown} need at least {need}"
        ) from None
    rng = np.random.default_rng(seed)
    order = _ordered_speakers(strata, rng)
    labels = _interleave(counts)
    assignment = dict(zip(order, labels, strict=True))
    speaker_part = manifest["speaker"].astype(str).map(assignment)
    return {name: manifest[speaker_part == p] for p, name in enumerate(names)}


# --------------------------------------------------------------------------- protocols


def speaker_split(
    manifest: pd.DataFrame,
    ratios: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    stratify_by: str | None = "gender",
) -> Split:
    """Split a manifest into train / validation / test by speaker.

    Parameters
    ----------
    manifest:
        Manifest rows (needs ``path`` and ``speaker``, plus ``stratify_by``).
    ratios:
        Shares of *speakers* (not utterances) for train, validation and test; normalised by
        their sum, so ``(8, 1, 1)`` works. A zero gives an empty partition.
    seed:
        Seed of the speaker shuffle.
    stratify_by:
        A per-speaker column (``gender``, ``corpus``...) whose groups are spread over the
        partitions in proportion, or ``None``. A speaker with two values of it raises.

    Rounding
    --------
    Speaker counts come from :func:`apportion` (largest remainder, then every non-zero ratio
    gets at least one speaker), so the totals are exact, e.g. 10 speakers at
    ``(0.6, 0.2, 0.2)`` give 6 / 2 / 2 and 4 speakers give 2 / 1 / 1. With stratification the
    speakers are ordered stratum by stratum and the partitions dealt out evenly along that
    order, so each stratum's share is within one speaker per partition of proportional while
    the totals stay exact (EmoDB's 5 f + 5 m at 0.6/0.2/0.2 give 3 + 3 / 1 + 1 / 1 + 1).

    Raises
    ------
    ProtocolError
        Bad ratios, or fewer speakers than non-zero ratios (message gives both numbers).
    """
    _require_columns(manifest, ["path", "speaker"], "speaker_split")
    r = _check_ratios(ratios, PARTITIONS)
    parts = _assign_speakers(manifest, r, check_seed(seed), stratify_by, PARTITIONS,
                             "speaker_split")
    check_speaker_independence(parts)
    return Split(**parts)


def speaker_folds(
    manifest: pd.DataFrame,
    k: int,
    seed: int = 0,
    validation: bool = True,
    stratify_by: str | None = "gender",
) -> list[Split]:
    """``k`` speaker-independent folds (cross-validation over speaker groups).

    Speakers are shuffled (``seed``), ordered stratum by stratum when ``stratify_by`` is
    given, and dealt round-robin into ``k`` groups whose sizes differ by at most one (the
    first ``n_speakers % k`` groups get the extra speaker). Fold ``i`` tests on group ``i``,
    validates on group ``(i + 1) % k`` when ``validation`` (else validation is empty) and
    trains on the rest. Every speaker is tested on exactly once.

    Raises :class:`ProtocolError` when ``k < 2`` (``k < 3`` with validation) or ``k`` exceeds
    the number of speakers.
    """
    _require_columns(manifest, ["path", "speaker"], "speaker_folds")
    seed = check_seed(seed)
    minimum = 3 if validation else 2
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < minimum:
        raise ProtocolError(f"speaker_folds: k must be an integer >= {minimum} "
                            f"(validation={validation}), got {k!r}")
    strata = _speaker_strata(manifest, stratify_by, "speaker_folds")
    if k > len(strata):
        raise ProtocolError(f"speaker_folds: k={k} folds need at least {k} speakers, "
                            f"manifest has {len(strata)}")
    order = _ordered_speakers(strata, np.random.default_rng(seed))
    group = {s: i % k for i, s in enumerate(order)}
    speaker_group = manifest["speaker"].astype(str).map(group)
    empty = manifest.iloc[0:0]
    out = []
    for i in range(k):
        val_group = (i + 1) % k if validation else -1
        parts = {
            "train": manifest[(speaker_group != i) & (speaker_group != val_group)],
            "validation": manifest[speaker_group == val_group] if validation else empty,
            "test": manifest[speaker_group == i],
        }
        check_speaker_independence({f"fold {i} {n}": f for n, f in parts.items()})
        out.append(Split(**parts))
    return out


def explicit_folds(
    manifest: pd.DataFrame,
    folds: Sequence[Mapping[str, Sequence[str]]],
) -> list[Split]:
    """Folds from explicit speaker lists (published protocols, e.g. a fixed test speaker set).

    Each fold maps partition names (``train``, ``validation``, ``test``) to speaker ids as
    they appear in the manifest's ``speaker`` column. A missing ``validation`` means none; a
    missing ``train`` means every manifest speaker not listed in that fold's other
    partitions. Speakers of the manifest that a fold lists nowhere (when ``train`` is given)
    are not used in that fold: :meth:`Split.describe` shows what each partition holds.

    Raises
    ------
    ProtocolError
        An unknown partition name, or speakers absent from the manifest (all named).
    SpeakerLeakError
        A speaker listed in two partitions of one fold (fold and partitions named).
    """
    _require_columns(manifest, ["path", "speaker"], "explicit_folds")
    if isinstance(folds, Mapping):
        raise ProtocolError("explicit_folds: folds must be a sequence of mappings; "
                            "wrap a single fold in a list")
    speaker_col = manifest["speaker"].astype(str)
    known = set(speaker_col)
    out = []
    for i, fold in enumerate(folds):
        bad_keys = sorted(set(fold) - set(PARTITIONS))
        if bad_keys:
            raise ProtocolError(f"explicit_folds: fold {i} has unknown partition(s) "
                                f"{bad_keys}; use {list(PARTITIONS)}")
        if "test" not in fold:
            raise ProtocolError(f"explicit_folds: fold {i} lists no test speakers")
        lists: dict[str, list[str]] = {}
        for name in PARTITIONS:
            if name not in fold:
                continue
            value = fold[name]
            if isinstance(value, str):
                raise ProtocolError(f"explicit_folds: fold {i} {name} must be a list of "
                                    f"speakers, got the string {value!r}")
            lists[name] = [str(s) for s in value]
            unknown = sorted(set(lists[name]) - known)
            if unknown:
                raise ProtocolError(f"explicit_folds: fold {i} {name} names speaker(s) not in "
                                    f"the manifest: {unknown}")
        # Check the lists themselves, so a speaker listed twice is caught even without rows.
        check_speaker_independence({
            f"fold {i} {n}": pd.DataFrame({"speaker": v}) for n, v in lists.items()
        })
        if "train" not in lists:
            listed = set().union(*(set(v) for v in lists.values()))
            lists["train"] = sorted(known - listed)
        parts = {n: manifest[speaker_col.isin(set(lists.get(n, [])))] for n in PARTITIONS}
        check_speaker_independence({f"fold {i} {n}": f for n, f in parts.items()})
        out.append(Split(**parts))
    return out


def leave_one_out(
    manifest: pd.DataFrame,
    by: str = "corpus",
    validation_ratio: float = 0.0,
    seed: int = 0,
    stratify_by: str | None = "gender",
) -> list[tuple[str, Split]]:
    """Leave-one-corpus-out (``by="corpus"``) or leave-one-language-out (``by="language"``).

    For each value ``v`` of column ``by`` (sorted), the test set is every row with ``by == v``
    and training uses all other rows. With ``validation_ratio > 0`` that share of the
    *training* speakers (rounded as in :func:`speaker_split`, at least one) becomes the
    validation set, chosen with ``seed`` and stratified by ``stratify_by``.

    Returns ``[(v, Split), ...]``, one per value, each value held out exactly once. A
    speaker occurring under two values of ``by`` (a bilingual speaker with
    ``by="language"``) raises :class:`SpeakerLeakError`.
    """
    _require_columns(manifest, ["path", "speaker", by], "leave_one_out")
    seed = check_seed(seed)
    if not 0.0 <= validation_ratio < 1.0:
        raise ProtocolError(f"leave_one_out: validation_ratio must be in [0, 1), "
                            f"got {validation_ratio!r}")
    values = sorted(set(manifest[by].astype(str)))
    if len(values) < 2:
        raise ProtocolError(f"leave_one_out: needs at least two values of {by!r}, "
                            f"manifest has {values}")
    column = manifest[by].astype(str)
    out = []
    for value in values:
        rest = manifest[column != value]
        test = manifest[column == value]
        if validation_ratio > 0:
            parts = _assign_speakers(
                rest, np.array([1.0 - validation_ratio, validation_ratio]), seed,
                stratify_by, ("train", "validation"), f"leave_one_out({by}={value!r})",
            )
            train, val = parts["train"], parts["validation"]
        else:
            train, val = rest, manifest.iloc[0:0]
        parts = {"train": train, "validation": val, "test": test}
        check_speaker_independence({f"held-out {by} {value!r} {n}": f for n, f in parts.items()})
        out.append((value, Split(**parts)))
    return out


def few_shot_subset(
    manifest: pd.DataFrame,
    k: int,
    seed: int = 0,
    stratify: bool = True,
    label_column: str = "emotion",
) -> pd.DataFrame:
    """``k`` labelled utterances drawn from ``manifest`` (the few-shot target set).

    With ``stratify`` the draw is as equal per class (``label_column``) as possible: classes
    are put in a random order (``seed``), each class's utterances shuffled (``seed``), and
    utterances are taken round-robin, one per class per round, classes that run out being
    skipped. So each class gets ``k // n_classes`` or one more, the extra ones going to the
    first classes of the random class order; a class with fewer utterances than its share
    gives all it has and the rest goes on round-robin to the others. Without ``stratify``
    the draw is a plain seeded shuffle.

    Both draws take the first ``k`` of one seeded ordering, so for the same seed (and
    manifest) the subsets are nested: the ``k=25`` subset lies inside the ``k=50`` one.
    ``k=0`` gives an empty frame with the manifest's columns. Rows keep the manifest's index
    and order.

    Raises :class:`ProtocolError` when ``k`` is negative or exceeds the number of rows.
    """
    _require_columns(manifest, ["path", label_column] if stratify else ["path"],
                     "few_shot_subset")
    seed = check_seed(seed)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ProtocolError(f"few_shot_subset: k must be a non-negative integer, got {k!r}")
    if k > len(manifest):
        raise ProtocolError(f"few_shot_subset: k={k} but the manifest has only "
                            f"{len(manifest)} utterance(s)")
    if k == 0:
        return manifest.iloc[0:0]
    order = _few_shot_order(manifest, seed, stratify, label_column)
    return manifest.iloc[np.sort(order[:k])]


def _few_shot_order(manifest: pd.DataFrame, seed: int, stratify: bool,
                    label_column: str) -> np.ndarray:
    """The seeded draw order of :func:`few_shot_subset` (positions; a prefix is a draw)."""
    rng = np.random.default_rng(seed)
    # Positions sorted by path so the draw does not depend on the manifest's row order.
    by_path = np.argsort(manifest["path"].astype(str).to_numpy(), kind="stable")
    if not stratify:
        return by_path[rng.permutation(len(by_path))]
    labels = manifest[label_column]
    if labels.isna().any() or (labels.astype(str).str.len() == 0).any():
        row = (labels.isna() | (labels.astype(str).str.len() == 0)).idxmax()
        raise CorpusError(f"few_shot_subset: empty {label_column!r} in row {row} "
                          f"({manifest.loc[row, 'path']})")
    labels_sorted = labels.astype(str).to_numpy()[by_path]
    classes = sorted(set(labels_sorted))
    class_order = rng.permutation(len(classes))
    queues = []
    for c in class_order:
        members = by_path[labels_sorted == classes[c]]
        queues.append(members[rng.permutation(len(members))])
    longest = max(len(q) for q in queues)
    return np.array([q[r] for r in range(longest) for q in queues if r < len(q)],
                    dtype=np.int64)


#: A few-shot size in seconds of speech: ``"150s"``, ``"37.5s"``.
SECONDS_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)s$")


def parse_few_shot(k: int | str) -> tuple[str, float]:
    """``("utterances", k)``, ``("seconds", s)`` for ``"<s>s"`` or ``("all", 0)``; anything
    else raises :class:`ProtocolError`."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0:
        return "utterances", float(k)
    if k == "all":
        return "all", 0.0
    match = SECONDS_PATTERN.match(k) if isinstance(k, str) else None
    if match is None:
        raise ProtocolError(f"few-shot size must be a number of utterances (>= 0), seconds "
                            f"such as '150s', or 'all'; got {k!r}")
    return "seconds", float(match.group(1))


def few_shot_seconds(
    manifest: pd.DataFrame,
    seconds: float,
    seed: int = 0,
    stratify: bool = True,
    label_column: str = "emotion",
) -> pd.DataFrame:
    """Labelled utterances totalling at least ``seconds`` of speech (``duration_s``): the
    shortest prefix of :func:`few_shot_subset`'s draw order that reaches it, so the draws
    are nested across sizes as well. ``0`` gives an empty frame; more than the manifest holds
    raises :class:`ProtocolError`."""
    _require_columns(manifest, ["path", "duration_s"], "few_shot_seconds")
    seed = check_seed(seed)
    if not np.isfinite(seconds) or seconds < 0:
        raise ProtocolError(f"few_shot_seconds: seconds must be >= 0, got {seconds!r}")
    if seconds == 0:
        return manifest.iloc[0:0]
    total = float(manifest["duration_s"].sum())
    if seconds > total:
        raise ProtocolError(f"few_shot_seconds: {seconds:g} s asked but the manifest holds "
                            f"only {total:.1f} s of speech")
    order = _few_shot_order(manifest, seed, stratify, label_column)
    cumulative = np.cumsum(manifest["duration_s"].to_numpy(np.float64)[order])
    n = int(np.searchsorted(cumulative, seconds - 1e-9) + 1)
    return manifest.iloc[np.sort(order[:n])]


def balance_by_repetition(groups: Sequence[Any] | np.ndarray,
                          max_repeats: int | None = None) -> np.ndarray:
    """Row positions that repeat each group's rows so every group (a training language) has
    about as many rows as the largest: a group of ``n`` rows is repeated
    ``round(n_largest / n)`` times (at least once, at most ``max_repeats``), as the wav2vec
    2.0 + Deep-WCCN paper repeats its smaller corpora (section 4.3). Positions come in row
    order, repeats after the originals."""
    groups = np.asarray(groups, dtype=object)
    if not len(groups):
        return np.zeros(0, dtype=np.int64)
    if max_repeats is not None and max_repeats < 1:
        raise ProtocolError(f"balance_by_repetition: max_repeats must be >= 1, got "
                            f"{max_repeats}")
    names, inverse, counts = np.unique(groups.astype(str), return_inverse=True,
                                       return_counts=True)
    repeats = np.maximum(1, np.rint(counts.max() / counts)).astype(np.int64)
    if max_repeats is not None:
        repeats = np.minimum(repeats, max_repeats)
    positions = np.arange(len(groups))
    rounds = [positions[repeats[inverse] > r] for r in range(int(repeats.max()))]
    return np.concatenate(rounds).astype(np.int64)


def cross_corpus_split(
    source: pd.DataFrame,
    target: pd.DataFrame,
    target_ratios: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    source_validation_ratio: float = 0.0,
    stratify_by: str | None = "gender",
    source_ratios: Sequence[float] | None = None,
    target_fold: tuple[int, int] | None = None,
) -> CrossCorpusSplit:
    """The speaker-disjoint pieces of a source -> target experiment.

    The source is used whole for training unless ``source_validation_ratio > 0`` holds out
    that share of its speakers for validation, or ``source_ratios`` (train, validation,
    test shares, as ``target_ratios``) splits it three ways. The target is split by speaker
    with ``target_ratios`` into train (the unlabelled / few-shot pool), validation and test,
    exactly as :func:`speaker_split` does (same rounding, ``seed`` and ``stratify_by``).

    ``target_fold=(i, n)`` rotates the target instead: its speakers are dealt into ``n``
    groups (:func:`speaker_folds`, same ``seed`` and ``stratify_by``), fold ``i`` tests on
    group ``i``, validates on group ``i + 1`` when ``target_ratios`` has a validation share
    (else none) and pools the rest for training; over ``i = 0 .. n-1`` every target
    utterance is tested exactly once.

    All pieces are checked together, so a speaker shared by source and target (the same
    corpus passed twice) raises :class:`SpeakerLeakError`.
    """
    _require_columns(source, ["path", "speaker"], "cross_corpus_split source")
    _require_columns(target, ["path", "speaker"], "cross_corpus_split target")
    seed = check_seed(seed)
    if not 0.0 <= source_validation_ratio < 1.0:
        raise ProtocolError(f"cross_corpus_split: source_validation_ratio must be in [0, 1), "
                            f"got {source_validation_ratio!r}")
    r = _check_ratios(target_ratios, PARTITIONS)
    if r[0] == 0 and r[2] == 0:
        raise ProtocolError(f"cross_corpus_split: target_ratios {tuple(target_ratios)} leave "
                            "no target speakers to adapt on or test on")
    if target_fold is None:
        tgt = _assign_speakers(target, r, seed, stratify_by, PARTITIONS,
                               "cross_corpus_split target")
    else:
        tgt = _target_fold(target, target_fold, seed, bool(r[1] > 0), stratify_by)
    if source_ratios is None:
        source_ratios = (1.0 - source_validation_ratio, source_validation_ratio, 0.0)
    s = _check_ratios(source_ratios, PARTITIONS)
    if s[0] == 0:
        raise ProtocolError(f"cross_corpus_split: source ratios {tuple(source_ratios)} leave "
                            "no source speakers to train on")
    if s[0] == 1.0:  # the whole source trains (no speaker minimum to meet)
        src = {"train": source, "validation": source.iloc[0:0], "test": source.iloc[0:0]}
    else:
        src = _assign_speakers(source, s, seed, stratify_by, PARTITIONS,
                               "cross_corpus_split source")
    parts = {
        "source_train": src["train"], "source_validation": src["validation"],
        "target_train": tgt["train"], "target_validation": tgt["validation"],
        "target_test": tgt["test"], "source_test": src["test"],
    }
    check_speaker_independence(parts)
    return CrossCorpusSplit(**parts)


def _target_fold(target: pd.DataFrame, fold: tuple[int, int], seed: int, validation: bool,
                 stratify_by: str | None) -> dict[str, pd.DataFrame]:
    """Fold ``fold[0]`` of ``fold[1]`` rotated speaker folds of the target, as partitions."""
    index, n = fold
    if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise ProtocolError(f"target fold {index!r} is outside 0..{n - 1}")
    try:
        folds = speaker_folds(target, n, seed, validation, stratify_by)
    except ProtocolError as exc:
        raise ProtocolError(f"target folds: {exc}") from None
    return folds[index].partitions()


# --------------------------------------------------------------------------- one cell

#: What a cell's methods may early-stop on: held-out source speakers (reads no target
#: label), target validation speakers, both, or nothing.
VALIDATION_CHOICES: tuple[str, ...] = ("source", "target", "both", "none")


@dataclass(eq=False)
class CellRows:
    """The manifest rows of one source -> target cell (see :func:`assemble_cell`).

    ``split`` holds the speaker-disjoint pieces; ``labelled`` is a subset of
    ``split.target_train`` (the few-shot draw, all of it, or none), ``unlabelled`` the
    whole of ``split.target_train`` (its labels are hidden from methods), ``validation``
    the rows methods early-stop on.
    """

    split: CrossCorpusSplit
    labelled: pd.DataFrame
    unlabelled: pd.DataFrame
    validation: pd.DataFrame

    def sizes(self) -> dict[str, dict[str, int]]:
        """Utterances and speakers per piece (JSON-ready)."""
        pieces = {**self.split.partitions(), "target_labelled": self.labelled,
                  "target_unlabelled": self.unlabelled, "validation": self.validation}
        return {name: {"utterances": len(f), "speakers": int(f["speaker"].nunique())}
                for name, f in pieces.items()}


def assemble_cell(
    source: pd.DataFrame,
    target: pd.DataFrame,
    *,
    k: int | str = 0,
    validation: str = "source",
    seed: int = 0,
    target_ratios: Sequence[float] = (0.6, 0.2, 0.2),
    source_ratios: Sequence[float] = (1.0, 0.0, 0.0),
    stratify_by: str | None = "gender",
    target_fold: tuple[int, int] | None = None,
) -> CellRows:
    """Split, few-shot draw and validation rows of one cell: the one place that decides
    what a method sees (``emobridge run`` and ``emobridge train`` both come here).

    ``k`` is the number of labelled target training utterances
    (:func:`few_shot_subset`, seeded with ``seed``), seconds of them as ``"150s"``
    (:func:`few_shot_seconds`) or ``"all"``. ``target_fold`` rotates the target speakers
    (see :func:`cross_corpus_split`). The unlabelled pool is
    every target training utterance, the ``k`` labelled ones included: they are target
    audio too, and the pool then does not change with ``k``. ``validation`` is one of
    :data:`VALIDATION_CHOICES`; ``"source"`` reads no target label. Speakers and audio
    content are checked for leaks across the pieces.
    """
    if validation not in VALIDATION_CHOICES:
        raise ProtocolError(f"validation must be one of {', '.join(VALIDATION_CHOICES)}, "
                            f"got {validation!r}")
    kind, amount = parse_few_shot(k)
    split = cross_corpus_split(source, target, target_ratios, seed, stratify_by=stratify_by,
                               source_ratios=source_ratios, target_fold=target_fold)
    if split.target_test.empty:
        raise ProtocolError(f"target ratios {tuple(target_ratios)} leave no target test "
                            "speakers")
    check_audio_independence(split.partitions())
    pool = split.target_train
    if kind == "all":
        labelled = pool
    elif kind == "seconds":
        labelled = few_shot_seconds(pool, amount, seed)
    else:
        labelled = few_shot_subset(pool, int(amount), seed)
    pieces = {"source": [split.source_validation], "target": [split.target_validation],
              "both": [split.source_validation, split.target_validation], "none": []}
    rows = pieces[validation]
    val = pd.concat(rows) if rows else pool.iloc[0:0]
    return CellRows(split, labelled, pool, val)


#: Content hashes by (path, size, mtime, inode): a grid checks the same files in every cell.
_HASHES: dict[tuple[str, int, int, int], str] = {}


def _content_hash(path: str) -> str:
    from emobridge.audio import file_hash

    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        _HASHES[key] = file_hash(path)
    return _HASHES[key]


def check_audio_independence(partitions: Mapping[str, pd.DataFrame]) -> None:
    """Raise :class:`SpeakerLeakError` when the same audio is in two partitions.

    Speaker ids cannot see one corpus listed twice under two ids (its speakers get two
    prefixes), so files are compared too: by resolved path, then by content (BLAKE2b of
    the bytes) among files of equal size, so only candidate duplicates are read. Files
    that cannot be opened are left to the feature stage, which names them.
    """
    owner: dict[str, tuple[str, str, str]] = {}  # identity -> (partition, path, speaker)
    by_size: dict[int, list[tuple[str, str, str]]] = {}
    clashes: list[str] = []

    def claim(identity: str, entry: tuple[str, str, str]) -> None:
        first = owner.setdefault(identity, entry)
        if first[0] != entry[0]:
            clashes.append(f"{first[1]} (speaker {first[2]!r}, {first[0]}) and {entry[1]} "
                           f"(speaker {entry[2]!r}, {entry[0]})")

    for name, frame in partitions.items():
        for path, speaker in zip(frame["path"].astype(str), frame["speaker"].astype(str),
                                 strict=True):
            real = os.path.realpath(path)
            claim("path:" + real, (str(name), path, speaker))
            with contextlib.suppress(OSError):
                by_size.setdefault(os.stat(real).st_size, []).append((str(name), path, speaker))
    for group in by_size.values():
        if len({e[0] for e in group}) < 2:
            continue
        for entry in group:
            with contextlib.suppress(OSError):
                claim("hash:" + _content_hash(entry[1]), entry)
    if clashes:
        listed = "; ".join(sorted(set(clashes))[:_MAX_LISTED])
        raise SpeakerLeakError(
            f"the same audio is in two partitions ({len(set(clashes))} file pair(s)): {listed}; "
            "is one corpus listed twice under two ids?")
