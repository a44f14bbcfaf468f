"""Model bundles: a fitted method plus everything needed to apply it to new audio.

A bundle is a folder::

    model.safetensors   every array the method needs (weights, normaliser statistics,
                        NNPM memory, forest nodes...)
    bundle.json         format version, emobridge version, extractor spec and feature id,
                        classes in output order, method name / parameters / small fitted
                        values, training summary, model card, SHA-256 of every other file
    memory.safetensors  (optional) the source memory: training vectors, labels, speaker and
                        corpus ids, so that the bundle can adapt to a user's recordings
                        (:mod:`emobridge.inference.memory`)
    card.md             (optional) the model card as Markdown
    delta.safetensors   (optional) tuned encoder layers as a weight delta, when the features
                        were extracted with one (``whisper:...,delta=<file>``): the file is
                        copied in and the spec names it by its file name

An *adapted* bundle (``emobridge adapt``) is a bundle like any other; its ``bundle.json``
also holds ``adaptation``: the domain it was adapted to (files, hours, a digest of the file
list, speakers used, statistics, pseudo-label class shares per round, warnings, time).

Loading checks the format version and every checksum before reading any array and raises
:class:`~emobridge.errors.EmobridgeError` naming what is wrong. Nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emobridge.errors import EmobridgeError
from emobridge.fileio import (
    prepare_output_dir,
    read_json,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)

__all__ = ["BUNDLE_JSON", "FORMAT", "FORMAT_VERSION", "Bundle", "load_bundle", "save_bundle",
           "training_summary"]

BUNDLE_JSON = "bundle.json"
CARD_FILE = "card.md"
DELTA_FILE = "delta.safetensors"
FORMAT = "emobridge-bundle"
#: Bumped when the layout changes so that an old emobridge refuses a newer bundle.
FORMAT_VERSION = 1


@dataclass
class Bundle:
    """A loaded bundle: the fitted ``method`` and the ``meta`` of ``bundle.json``."""

    path: Path
    method: Any
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def memory_meta(self) -> dict[str, Any] | None:
        """The source memory's description in ``bundle.json`` (``None``: no memory)."""
        memory = self.meta.get("memory")
        return memory if isinstance(memory, dict) else None

    @property
    def adaptation(self) -> dict[str, Any] | None:
        """The domain this bundle was adapted to (``None`` for a trained bundle)."""
        adaptation = self.meta.get("adaptation")
        return adaptation if isinstance(adaptation, dict) else None

    def load_memory(self) -> Any:
        """The :class:`~emobridge.inference.memory.SourceMemory` (checksummed at load);
        :class:`EmobridgeError` when the bundle has none."""
        from emobridge.inference.memory import SourceMemory

        if self.memory_meta is None:
            raise EmobridgeError(f"{self.path}: this bundle has no source memory, so it cannot "
                                 "adapt (retrain it with 'emobridge train', which keeps one)")
        name = self.memory_meta.get("file")
        if name not in self.meta.get("files", {}):  # only checksummed files are read
            raise EmobridgeError(f"{self.path / BUNDLE_JSON}: the source memory {name!r} is "
                                 "not among the bundle's checksummed files")
        return SourceMemory.read(self.path, self.memory_meta)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def extractor_spec(self) -> dict[str, Any]:
        """The features' spec, a weight delta resolved to the bundle's own copy."""
        spec = dict(self.meta["extractor"])
        params = dict(spec.get("params") or {})
        if "delta" in params:
            params["delta"] = str(self.path / params["delta"])
        return {**spec, "params": params}

    @property
    def card(self) -> dict[str, Any]:
        """The model card (what ``emobridge model info`` and ``GET /v1/model`` show)."""
        memory = self.memory_meta
        card = {"path": str(self.path), "method": self.meta["method"]["name"],
                "classes": list(self.classes), "extractor": self.meta["extractor"],
                "feature_id": self.meta.get("feature_id"),
                "emobridge_version": self.meta.get("emobridge_version"),
                "training": self.meta.get("training") or {},
                "source_memory": None if memory is None else {
                    k: memory.get(k) for k in ("utterances", "dims", "dtype", "bytes",
                                               "speaker_features")},
                **(self.meta.get("card") or {})}
        if isinstance(fit_report := self.meta["method"]["state"].get("fit_report"), dict) \
                and fit_report:
            card["fit_report"] = fit_report  # choices the fit made from the data
        if self.adaptation is not None:
            card["adaptation"] = self.adaptation
        return card


def training_summary(source: Any, target: Any = None,
                     metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a bundle records about its training data: languages, speakers and utterances
    per class of the labelled ``source`` (an :class:`~emobridge.methods.EmotionData`), the
    unlabelled ``target`` seen (languages, utterances) and held-out ``metrics``."""
    import numpy as np

    counts = np.bincount(source.labels[source.labels >= 0], minlength=len(source.classes))
    summary: dict[str, Any] = {
        "languages": sorted({str(x) for x in source.languages}),
        "speakers": len({str(x) for x in source.speakers}),
        "utterances": len(source),
        "utterances_per_class": {c: int(n) for c, n in zip(source.classes, counts,
                                                           strict=True)}}
    if target is not None and len(target):
        summary["unlabelled_target"] = {"languages": sorted({str(x) for x in target.languages}),
                                        "utterances": len(target)}
    if metrics:
        summary["metrics"] = dict(metrics)
    return summary


def interrupted_save_files() -> tuple[str, ...]:
    """The files a bundle save writes before ``bundle.json`` (which comes last): a folder
    holding only these is a save that was killed (``train --resume`` or ``adapt`` run again
    after a kill) and may be completed."""
    from emobridge.inference.memory import MEMORY_FILE
    from emobridge.methods.state import WEIGHTS_FILE

    return WEIGHTS_FILE, MEMORY_FILE, CARD_FILE, DELTA_FILE


def _bundle_extractor(ext: Any, directory: Path) -> tuple[dict[str, Any], list[str]]:
    """``ext``'s spec for ``bundle.json`` and the files it adds: a weight delta is copied
    into the bundle (unless it is already the bundle's own) and named by its file name."""
    from emobridge.fileio import atomic_open

    spec = ext.spec()
    delta = spec["params"].get("delta")
    target = directory / DELTA_FILE
    if delta is None:
        if target.exists():  # left by the bundle being replaced
            target.unlink()
        return spec, []
    if Path(delta).resolve() != target.resolve():
        with atomic_open(target, "wb") as fh:
            fh.write(Path(delta).read_bytes())
    spec["params"]["delta"] = DELTA_FILE
    return spec, [DELTA_FILE]


def save_bundle(
    method: Any,
    directory: str | Path,
    *,
    extractor: Mapping[str, Any] | str,
    training: Mapping[str, Any] | None = None,
    card: Mapping[str, Any] | None = None,
    card_markdown: str | None = None,
    label_set: str | None = None,
    memory: Any = None,
    adaptation: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``method`` (fitted) as a bundle in ``directory`` (new, empty, or an earlier
    bundle, which is replaced).

    ``extractor`` is the spec of the features the method was trained on (a spec string or
    ``{"name", "params"}``); ``training`` a JSON summary (corpora, languages, speakers and
    utterances per class, held-out metrics); ``card`` extra model-card fields (intended
    use, limits, licences...), ``card_markdown`` the card as text. ``memory`` (a
    :class:`~emobridge.inference.memory.SourceMemory`) lets the bundle adapt later;
    ``adaptation`` describes the domain an adapted bundle was adapted to.
    """
    from emobridge import __version__
    from emobridge.features.registry import build_extractor
    from emobridge.fileio import write_arrays
    from emobridge.methods.state import WEIGHTS_FILE, method_state

    ext = build_extractor(extractor)
    directory = Path(directory)
    prepare_output_dir(directory, marker=BUNDLE_JSON, what="bundle folder",
                       allow=interrupted_save_files())
    state, arrays = method_state(method)
    write_arrays(directory / WEIGHTS_FILE, arrays)
    spec, files = _bundle_extractor(ext, directory)
    files.append(WEIGHTS_FILE)
    memory_meta = None
    if memory is not None:
        memory_meta = memory.write(directory)
        files.append(memory_meta["file"])
    elif (directory / "memory.safetensors").exists():  # left by the bundle being replaced
        (directory / "memory.safetensors").unlink()
    if card_markdown is not None:
        write_text_atomic(directory / CARD_FILE, card_markdown)
        files.append(CARD_FILE)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "emobridge_version": __version__,
        "extractor": spec, "feature_id": ext.id, "sample_rate_hz": ext.sample_rate_hz,
        "classes": list(state["classes"]), "label_set": label_set,
        "method": {"name": state["method"], "params": state.get("params", {}),
                   "state": state},
        "training": dict(training or {}), "card": dict(card or {}),
        "memory": memory_meta, "adaptation": None if adaptation is None else dict(adaptation),
        "files": {name: sha256_file(directory / name) for name in files},
    }
    write_json_atomic(directory / BUNDLE_JSON, meta)  # last: a bundle.json means complete
    return directory


def read_bundle_meta(directory: str | Path) -> dict[str, Any]:
    """``bundle.json`` after the format and checksum checks (no array read)."""
    directory = Path(directory)
    path = directory / BUNDLE_JSON
    if not directory.is_dir():
        raise EmobridgeError(f"{directory}: model bundle folder not found")
    meta = read_json(path, f"{directory}: not a model bundle (no {BUNDLE_JSON})")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EmobridgeError(f"{path}: not an emobridge bundle (format "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise EmobridgeError(f"{path}: bundle format version {version!r}; this emobridge "
                             f"reads version {FORMAT_VERSION} (re-export the model with a "
                             "matching emobridge)")
    for key in ("extractor", "classes", "method", "files"):
        if key not in meta:
            raise EmobridgeError(f"{path}: bundle.json lacks {key!r}")
    _check_shape(meta, path)
    _check_files(directory, meta["files"])
    return meta


def _check_shape(meta: Mapping[str, Any], path: Path) -> None:
    """The JSON types every reader of ``bundle.json`` relies on (a hand-edited or damaged
    file gets one line naming the key, not an exception deep inside loading)."""
    def need(ok: bool, where: str, what: str) -> None:
        if not ok:
            raise EmobridgeError(f"{path}: {where} must be {what}")

    classes = meta["classes"]
    need(isinstance(classes, list) and bool(classes)
         and all(isinstance(c, str) and c for c in classes), "classes",
         "a non-empty list of class names")
    for key in ("extractor", "method"):
        need(isinstance(meta[key], dict), key, "an object")
        need(isinstance(meta[key].get("name"), str), f"{key}.name", "a string")
        need(isinstance(meta[key].get("params", {}), dict), f"{key}.params", "an object")
    need(isinstance(meta["method"].get("state"), dict), "method.state", "an object")
    files = meta["files"]
    need(isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str)
                                         for k, v in files.items()),
         "files", "an object of file names and SHA-256 digests")
    for key in ("card", "training", "memory", "adaptation"):
        need(meta.get(key) is None or isinstance(meta[key], dict), key, "an object or null")
    delta = meta["extractor"].get("params", {}).get("delta")
    need(delta is None or (isinstance(delta, str) and delta in files), "extractor.params.delta",
         "the name of a file of the bundle (listed in files)")


def _check_files(directory: Path, files: Mapping[str, str]) -> None:
    for name, expected in files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise EmobridgeError(f"{directory / BUNDLE_JSON}: bad file name {name!r}")
        path = directory / name
        if not path.is_file():
            raise EmobridgeError(f"{path}: file of the bundle is missing")
        if sha256_file(path) != expected:
            raise EmobridgeError(f"{path}: checksum mismatch (the file was changed or "
                                 "damaged after the bundle was written)")


def load_bundle(directory: str | Path, device: str | None = "cpu") -> Bundle:
    """Load and verify a bundle; the method is ready to ``predict_proba``."""
    from emobridge.fileio import read_arrays
    from emobridge.methods.state import WEIGHTS_FILE, method_from_state

    directory = Path(directory)
    meta = read_bundle_meta(directory)
    arrays = read_arrays(directory / WEIGHTS_FILE)
    try:
        method = method_from_state(meta["method"]["state"], arrays, device=device)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # malformed state
        raise EmobridgeError(f"{directory}: bundle does not describe a loadable method "
                             f"({type(exc).__name__}: {exc})") from None
    except EmobridgeError as exc:
        raise EmobridgeError(f"{directory}: {exc}") from None
    return Bundle(directory, method, meta)
