"""Estimate the speakers of an unlabelled folder from GE2E embeddings, blind to emotion.

Per-speaker normalisation needs speaker ids that a user's folder lacks. GE2E clusters follow
emotion almost as much as speaker, and per-cluster statistics of emotion-pure clusters erase
the emotion, so :func:`estimate_speakers`:

1. learns on labelled source data (speaker AND emotion labels) an emotion-blind projection:
   (a) the emotion subspace: PCA of the speaker x emotion cell means after subtracting each
   speaker's mean (how emotion moves an embedding, pooled over speakers); its top
   ``emotion_dims`` directions are removed; (b) PCA of what remains on the source, keeping
   ``pca_dims`` directions (GE2E is a ReLU output with dimensions that are ~0 on whole corpora;
   without this the LDA blows up target utterances that use them: 40 ASED utterances landed
   10x further out than the rest); (c) a speaker LDA (scikit-learn, ``eigen`` solver,
   Ledoit-Wolf shrinkage) keeping ``speaker_dims`` directions: LDA treats the remaining
   emotion variation as within-speaker noise and whitens it away;
2. clusters the projected utterances with Ward agglomerative clustering for every
   ``k = 2 .. max_speakers`` whose clusters all have ``min_cluster_size`` utterances;
3. scores each ``k`` by its silhouette minus the mean silhouette of Ward on Gaussian data of
   the same mean and covariance (``n_null`` draws, seeded): the excess over "no structure";
4. picks the coarsest ``k`` whose excess reaches ``coarse_tolerance`` of the best excess
   (finer splits must clearly beat coarse ones), and falls back to one group when no ``k``
   has an excess of at least ``min_excess`` (or there are fewer than ``2 * min_cluster_size``
   utterances, or no ``k`` is admissible).

The defaults (:data:`DEFAULT_CONFIG`: 3 emotion directions removed, PCA 64, LDA 16,
tolerance 0.6, minimum excess 0.10, 4 null draws, k <= 30) were chosen leave-one-corpus-out
on EMO-DB, RAVDESS, EMOVO, ASED and emotiontts (``benchmarks/bench_speakers.py``, section
"speakers" of ``benchmarks/RESULTS.md``): in every fold the inner selection, scored by a
downstream UA proxy, took tolerance 0.6, which in practice finds the coarse split (k = 2 on
all five corpora, mostly the speakers' sexes); finer splits, even emotion-blind ones, lost
UA. Emotion dims 3 vs 8 and LDA 16 vs 32 made no measurable difference (3 / 16: the simpler).
The minimum excess guards one-speaker folders, whose only structure is emotion: 0.10 is the
90th percentile of the best excess of 71 one-speaker folders (every speaker of the five
corpora alone, projection learned on the other corpora); whole corpora reach 0.105 - 0.21.
Falling back costs little (one group was at most 2.4 UA points below the coarse split),
splitting one speaker by emotion costs much, hence the high threshold.
Everything is deterministic for the same input and seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from emobridge.errors import ConfigError
from emobridge.runtime import check_seed

__all__ = ["DEFAULT_CONFIG", "ClusterConfig", "SpeakerEstimate", "cluster_scores",
           "estimate_speakers", "estimate_speakers_with", "fit_projection"]


@dataclass
class SpeakerEstimate:
    """Estimated speaker of every utterance.

    ``speakers``: object array of str ids (``"spk01"``...), one per utterance, all equal on
    fallback; ``count``: number of estimated speakers (1 on fallback); ``method``: short
    description; ``fallback``: why it fell back to one group, else ``None``; ``details``:
    JSON-serialisable diagnostics (k tried, scores, chosen k, projection dims...).
    """

    speakers: np.ndarray
    count: int
    method: str
    fallback: str | None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterConfig:
    """Choices of :func:`estimate_speakers_with` (see the module docstring)."""

    emotion_dims: int = 3
    speaker_dims: int = 16
    pca_dims: int = 64
    #: "null": silhouette minus the null silhouette; "silhouette": plain silhouette (baseline)
    k_rule: str = "null"
    coarse_tolerance: float = 0.6
    min_excess: float = 0.10
    n_null: int = 4
    max_k: int = 30

    def __post_init__(self) -> None:
        if self.k_rule not in ("null", "silhouette"):
            raise ConfigError(f"k_rule must be 'null' or 'silhouette', got {self.k_rule!r}")
        if not 0 < self.coarse_tolerance <= 1:
            raise ConfigError(f"coarse_tolerance must be in (0, 1], got {self.coarse_tolerance}")

    def describe(self, projected: bool) -> str:
        """Short method string for :attr:`SpeakerEstimate.method`."""
        proj = f"ge2e+lda{self.speaker_dims}(-emotion{self.emotion_dims})" if projected \
            else "ge2e"
        rule = "k by silhouette" if self.k_rule == "silhouette" else \
            f"k: coarsest with silhouette excess >= {self.coarse_tolerance:g} x best"
        return f"{proj}+ward, {rule}"


#: The defaults of :func:`estimate_speakers`.
DEFAULT_CONFIG = ClusterConfig()


def estimate_speakers(embeddings: np.ndarray, *, source_embeddings: np.ndarray | None = None,
                      source_speakers: np.ndarray | None = None,
                      source_labels: np.ndarray | None = None, min_cluster_size: int = 8,
                      max_speakers: int | None = None, seed: int = 0) -> SpeakerEstimate:
    """Estimate speakers of ``embeddings`` (``(n, 256)`` GE2E vectors) with :data:`DEFAULT_CONFIG`.

    ``source_embeddings`` / ``source_speakers`` / ``source_labels`` (integer emotions):
    labelled data the emotion-blind projection is learned on; all three or none (then the
    embeddings are clustered as they are). ``min_cluster_size``: the smallest admissible
    cluster (and the fallback below ``2 * min_cluster_size`` utterances); ``max_speakers``:
    the largest ``k`` tried (default ``min(30, n // min_cluster_size)``). See the module
    docstring for every step.
    """
    return estimate_speakers_with(
        embeddings, DEFAULT_CONFIG, source_embeddings=source_embeddings,
        source_speakers=source_speakers, source_labels=source_labels,
        min_cluster_size=min_cluster_size, max_speakers=max_speakers, seed=seed)


def estimate_speakers_with(embeddings: np.ndarray, config: ClusterConfig, *,
                           source_embeddings: np.ndarray | None = None,
                           source_speakers: np.ndarray | None = None,
                           source_labels: np.ndarray | None = None, min_cluster_size: int = 8,
                           max_speakers: int | None = None, seed: int = 0) -> SpeakerEstimate:
    """:func:`estimate_speakers` with explicit choices (benchmarks compare configurations)."""
    x = _check_matrix(embeddings, "embeddings")
    seed = check_seed(seed)
    if isinstance(min_cluster_size, bool) or not isinstance(min_cluster_size, int) \
            or min_cluster_size < 1:
        raise ConfigError(f"min_cluster_size must be a positive int, got {min_cluster_size!r}")
    given = [a is not None for a in (source_embeddings, source_speakers, source_labels)]
    if any(given) and not all(given):
        raise ConfigError("source_embeddings, source_speakers and source_labels go together: "
                          "give all three or none")
    details: dict[str, Any] = {"n": int(len(x)), "config": asdict(config),
                               "min_cluster_size": min_cluster_size}
    projected = all(given)
    method = config.describe(projected)
    if projected:
        projection = fit_projection(source_embeddings, source_speakers, source_labels,
                                    emotion_dims=config.emotion_dims,
                                    speaker_dims=config.speaker_dims,
                                    pca_dims=config.pca_dims, width=x.shape[1])
        x = projection.transform(x)
        details["projection"] = projection.summary()
    if len(x) < 2 * min_cluster_size:
        return _single(len(x), method, f"{len(x)} utterances, fewer than 2 x min_cluster_size "
                       f"({2 * min_cluster_size})", details)
    top = min(config.max_k, len(x) // min_cluster_size)
    if max_speakers is not None:
        if isinstance(max_speakers, bool) or not isinstance(max_speakers, int) \
                or max_speakers < 1:
            raise ConfigError(f"max_speakers must be a positive int, got {max_speakers!r}")
        top = min(top, max_speakers)
    if top < 2:
        return _single(len(x), method, f"max_speakers={top}: nothing to split", details)
    return _choose_k(x, range(2, top + 1), config, min_cluster_size, seed, method, details)


# ---------------------------------------------------------------------------- projection


@dataclass
class Projection:
    """Emotion subspace removal followed by a speaker LDA, learned on labelled source data."""

    keep_basis: np.ndarray  # (width, m) orthonormal: emotion removed, source PCA kept
    lda: Any  # fitted LinearDiscriminantAnalysis, or None when there are < 2 speakers
    n_source: int
    n_source_speakers: int
    emotion_dims_removed: int

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project ``x`` (``(n, width)``) into the emotion-blind speaker space."""
        # Coordinates in the complement (not a projection inside the full space): the LDA
        # then never sees the removed directions, whose zero source variance it would amplify.
        x = np.asarray(x, dtype=np.float64) @ self.keep_basis
        return self.lda.transform(x) if self.lda is not None else x

    def summary(self) -> dict[str, int]:
        """JSON-serialisable description for :attr:`SpeakerEstimate.details`."""
        return {"emotion_dims_removed": self.emotion_dims_removed,
                "pca_dims": int(self.keep_basis.shape[1]),
                "speaker_dims": int(self.lda.n_components) if self.lda is not None else 0,
                "n_source": self.n_source, "n_source_speakers": self.n_source_speakers}


def fit_projection(source_embeddings: np.ndarray, source_speakers: np.ndarray,
                   source_labels: np.ndarray, *, emotion_dims: int = 3, speaker_dims: int = 16,
                   pca_dims: int | None = 64, width: int | None = None) -> Projection:
    """Learn the emotion-blind projection (module docstring, step 1) on labelled data."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    xs = _check_matrix(source_embeddings, "source_embeddings")
    if width is not None and xs.shape[1] != width:
        raise ConfigError(f"source_embeddings have {xs.shape[1]} dims, embeddings {width}")
    spk = np.asarray(source_speakers).astype(str)
    emo = np.asarray(source_labels)
    if len(spk) != len(xs) or len(emo) != len(xs):
        raise ConfigError(f"source_speakers ({len(spk)}) and source_labels ({len(emo)}) must "
                          f"have one entry per source embedding ({len(xs)})")
    keep = _emotion_complement(xs, spk, emo, emotion_dims)
    removed = xs.shape[1] - keep.shape[1]
    if pca_dims:
        # GE2E is a ReLU output: some dimensions are ~0 on all source data, and the LDA would
        # amplify them without bound for target utterances that do use them. Keep only the
        # directions that vary in the source.
        xr = xs @ keep
        _, _, vt = np.linalg.svd(xr - xr.mean(axis=0), full_matrices=False)
        keep = keep @ vt[:min(pca_dims, len(vt))].T
    xs = xs @ keep
    n_spk = len(np.unique(spk))
    lda = None
    if n_spk >= 2 and speaker_dims > 0:
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto",
                                         n_components=min(speaker_dims, n_spk - 1, xs.shape[1]))
        lda.fit(xs, spk)
    return Projection(keep, lda, len(xs), n_spk, removed)


def _emotion_complement(x: np.ndarray, spk: np.ndarray, emo: np.ndarray, dims: int
                        ) -> np.ndarray:
    """Orthonormal basis ``(width, width - r)`` of what is left after removing the top
    ``r <= dims`` principal directions of the speaker-centred speaker x emotion cell means."""
    if dims <= 0:
        return np.eye(x.shape[1])
    cells = []
    for s in np.unique(spk):
        rows = spk == s
        centre = x[rows].mean(axis=0)
        cells += [x[rows & (emo == e)].mean(axis=0) - centre for e in np.unique(emo[rows])]
    # Uncentred SVD: the cells are already deviations from their speaker's mean.
    _, sing, vt = np.linalg.svd(np.asarray(cells), full_matrices=True)
    r = int(min(dims, int((sing > 1e-10 * max(sing.max(), 1e-300)).sum())))
    return vt[r:].T


# ---------------------------------------------------------------------------- clustering


def _choose_k(x: np.ndarray, ks: range, config: ClusterConfig, min_size: int, seed: int,
              method: str, details: dict[str, Any]) -> SpeakerEstimate:
    """Cluster for every k, score against the null, pick k or fall back (module docstring)."""
    labels_by_k = _ward_labels(x, ks)
    sil = {k: _silhouette(x, lab) for k, lab in labels_by_k.items()}
    sizes = {k: int(np.bincount(lab).min()) for k, lab in labels_by_k.items()}
    admissible = [k for k in ks if sizes[k] >= min_size]
    details.update(k_tried=list(ks), silhouette={str(k): round(sil[k], 4) for k in ks},
                   smallest_cluster={str(k): sizes[k] for k in ks})
    if not admissible:
        return _single(len(x), method, f"every k in {ks.start}..{ks.stop - 1} leaves a cluster "
                       f"smaller than min_cluster_size ({min_size})", details)
    if config.k_rule == "silhouette":
        best = max(admissible, key=lambda k: (sil[k], -k))
        details["chosen_k"] = best
        return _result(labels_by_k[best], method, details)
    null = _null_silhouettes(x, admissible, config.n_null, seed)
    excess = {k: sil[k] - null[k] for k in admissible}
    details.update(null_silhouette={str(k): round(null[k], 4) for k in admissible},
                   excess={str(k): round(excess[k], 4) for k in admissible})
    top = max(excess.values())
    if top < config.min_excess:
        return _single(len(x), method, f"no cluster structure: best silhouette excess over "
                       f"Gaussian data {top:.3f} < {config.min_excess:g}", details)
    chosen = min(k for k in admissible if excess[k] >= config.coarse_tolerance * top - 1e-12)
    details["chosen_k"] = chosen
    return _result(labels_by_k[chosen], method, details)


def _ward_labels(x: np.ndarray, ks: range | list[int]) -> dict[int, np.ndarray]:
    """Ward cluster labels for every k, cut from one dendrogram (scipy's Ward linkage, the
    tree behind scikit-learn's ``AgglomerativeClustering(linkage="ward")``, built once)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(x, method="ward")
    return {k: fcluster(tree, k, criterion="maxclust").astype(int) - 1 for k in ks}


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(x, labels)) if len(np.unique(labels)) > 1 else -1.0


def _null_silhouettes(x: np.ndarray, ks: list[int], draws: int, seed: int) -> dict[int, float]:
    """Mean Ward silhouette per k on Gaussian draws with the mean and covariance of ``x``."""
    rng = np.random.default_rng(seed)
    mean, cov = x.mean(axis=0), np.cov(x, rowvar=False)
    # Square root of the covariance via its eigendecomposition (stable for singular ones).
    vals, vecs = np.linalg.eigh(np.atleast_2d(cov))
    root = vecs * np.sqrt(np.clip(vals, 0, None))
    totals = dict.fromkeys(ks, 0.0)
    for _ in range(max(1, draws)):
        sample = mean + rng.standard_normal((len(x), len(mean))) @ root.T
        for k, lab in _ward_labels(sample, ks).items():
            totals[k] += _silhouette(sample, lab)
    return {k: v / max(1, draws) for k, v in totals.items()}


def _result(labels: np.ndarray, method: str, details: dict[str, Any]) -> SpeakerEstimate:
    # Ids numbered by first appearance, so they do not depend on the tree's internal order.
    order = {lab: i for i, lab in enumerate(dict.fromkeys(labels.tolist()))}
    ids = np.array([f"spk{order[lab] + 1:02d}" for lab in labels.tolist()], dtype=object)
    return SpeakerEstimate(ids, len(order), method, None, details)


def _single(n: int, method: str, reason: str, details: dict[str, Any]) -> SpeakerEstimate:
    details = {**details, "chosen_k": 1}
    return SpeakerEstimate(np.array(["spk01"] * n, dtype=object), 1, method, reason, details)


def _check_matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(f"{name} must be a non-empty (n, dims) matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{name} contains NaN or infinite values")
    return arr


# ---------------------------------------------------------------------------- scoring


def cluster_scores(estimated: np.ndarray, true_speakers: np.ndarray,
                   emotions: np.ndarray) -> dict[str, float]:
    """Purity of the estimated groups w.r.t. the true speakers (share of utterances in their
    group's majority speaker), NMI with speaker and NMI with emotion (scikit-learn's
    arithmetic-mean NMI), and the number of groups."""
    from sklearn.metrics import normalized_mutual_info_score as nmi

    est = np.asarray(estimated).astype(str)
    spk = np.asarray(true_speakers).astype(str)
    emo = np.asarray(emotions).astype(str)
    if not len(est) == len(spk) == len(emo) or not len(est):
        raise ConfigError(f"cluster_scores: lengths differ or are 0 ({len(est)}, {len(spk)}, "
                          f"{len(emo)})")
    majority = 0
    for group in np.unique(est):
        _, counts = np.unique(spk[est == group], return_counts=True)
        majority += int(counts.max())
    return {"purity": majority / len(est), "nmi_speaker": float(nmi(spk, est)),
            "nmi_emotion": float(nmi(emo, est)), "k": int(len(np.unique(est)))}
