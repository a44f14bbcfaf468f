"""Feature extraction sharded over a Ray cluster, into one shared :class:`FeatureStore`.

The driver hashes the manifest's audio and plans what is missing exactly as
:meth:`FeatureStore.extract` does (cached and duplicate audio are not recomputed), splits the
missing files into shards of whole batches (the batches a local run makes, so the features
are identical) and extracts each shard in a Ray task that writes into the same store (its
own shard files; see :mod:`emobridge.features.store` for why concurrent writers are safe).
The store and the audio must be on a filesystem that every node mounts at the same path.
The result is the same store content as a local run.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from emobridge.errors import EmobridgeError, FeatureError
from emobridge.features.store import (
    ExtractorLike,
    ExtractReport,
    FeatureStore,
    ManifestLike,
    _Item,
    _manifest_paths,
)

Log = Callable[[str], None]


def extract_with_ray(
    store: FeatureStore | str | os.PathLike[str],
    manifest: ManifestLike,
    extractor: ExtractorLike,
    *,
    address: str | None = None,
    shards: int | None = None,
    num_cpus: int = 1,
    batch_size: int = 16,
    skip_errors: bool = False,
    verify: bool = True,
    log: Log | None = None,
) -> ExtractReport:
    """Extract every missing manifest row's features in Ray tasks (one per shard).

    ``shards``: how many tasks (default: two per task slot of the cluster, at most one per
    file); each asks for ``num_cpus`` CPUs, and one GPU when the extractor's device is CUDA.
    ``address``: as :func:`emobridge.raycluster.ray_session` (Ray already
    initialised is used as it is; no address starts a local instance on every core).
    Errors are those of :meth:`FeatureStore.extract`; the first failing shard's error is
    raised after the other shards are cancelled.
    """
    from emobridge.raycluster import ray_session

    start = time.perf_counter()
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    ext = store._resolve(extractor)[1]
    if ext is None:
        raise FeatureError(f"cannot build the extractor {extractor!r} to compute features")
    paths, durations = _manifest_paths(manifest)
    report = ExtractReport(ext.id, n_rows=len(paths))
    failures: dict[str, str] = {}
    # hashing reads every file once: threads (hashlib releases the GIL on large buffers)
    keys = store._hash_paths(paths, min(8, os.cpu_count() or 1),
                             failures if skip_errors else None)
    todo = store._plan(ext.id, paths, keys, durations, report, verify)
    store._save_hashes(create=bool(todo), best_effort=not todo)
    if todo:
        store._write_spec(ext)
        with ray_session(address) as ray:
            n = shards or 2 * max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))
            parts = split_shards(todo, n, batch_size)
            gpus = 1 if str(ext.params().get("device", "cpu")).startswith("cuda") else 0
            remote = ray.remote(_extract_shard).options(num_cpus=num_cpus, num_gpus=gpus,
                                                        max_retries=0)
            # each task gets its files' content hashes: no re-hashing, no hash-cache read
            refs = [remote.remote(str(store.root), [(it.path, it.key) for it in part],
                                  ext.spec(), ext.id, batch_size, skip_errors)
                    for part in parts]
            _collect(ray, refs, report, failures, log)
    report.failures = sorted(failures.items())
    report.failed = len(report.failures)
    report.seconds = time.perf_counter() - start
    return report


def split_shards(items: list[_Item], n: int, batch_size: int) -> list[list[_Item]]:
    """At most ``n`` non-empty shards made of whole extractor batches.

    ``items`` (in :meth:`FeatureStore.extract`'s order, longest first) are cut into the
    batches a local run would make, dealt round-robin to the shards: every waveform is
    extracted in the same batch as locally, so the features are identical to the last bit
    (batched extractors pad, and padding can change the last digit).
    """
    batches = [items[i: i + batch_size] for i in range(0, len(items), batch_size)]
    n = max(1, min(n, len(batches)))
    return [[it for batch in batches[i::n] for it in batch] for i in range(n)]


def _extract_shard(root: str, files: list[tuple[str, str]], spec: dict[str, Any], eid: str,
                   batch_size: int, skip_errors: bool) -> dict[str, Any]:
    """One shard, in a Ray worker: a plain :meth:`FeatureStore.extract` of its
    ``(path, content hash)`` pairs (given without durations, so it keeps their order and
    batches)."""
    from emobridge.features.registry import build_extractor

    ext = build_extractor(spec)
    if ext.id != eid:  # another emobridge version on this node would store elsewhere
        raise FeatureError(f"extractor {spec['name']} is {ext.id} on this node, {eid} on the "
                           "driver: install the same emobridge version on every node")
    paths = [p for p, _ in files]
    rep = FeatureStore(root).extract(paths, ext, workers=1, batch_size=batch_size,
                                     progress=False, skip_errors=skip_errors, verify=False,
                                     keys=[k for _, k in files])
    return {"computed": rep.computed, "audio_seconds": rep.audio_seconds,
            "failures": rep.failures, "n": len(files)}


def _collect(ray: Any, refs: list[Any], report: ExtractReport, failures: dict[str, str],
             log: Log | None) -> None:
    """Wait for the shard tasks, adding their counts to ``report``; cancel the rest on an
    error or an interrupt."""
    remaining = list(refs)
    done_files = 0
    total = 0
    try:
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1, timeout=0.5)
            for ref in done:
                try:
                    part = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, EmobridgeError):
                        raise cause from None
                    raise FeatureError(f"{report.extractor_id}: a shard task failed: "
                                       f"{str(exc).strip().splitlines()[0]}") from None
                except ray.exceptions.RayError as exc:
                    raise FeatureError(f"{report.extractor_id}: a shard's Ray worker died: "
                                       f"{str(exc).strip().splitlines()[0]}") from None
                report.computed += part["computed"]
                report.audio_seconds += part["audio_seconds"]
                failures.update(dict(part["failures"]))
                done_files += part["n"]
                total += 1
                if log is not None:
                    log(f"[{total}/{len(refs)}] shard done: {done_files} file(s)")
    finally:
        for ref in remaining:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
