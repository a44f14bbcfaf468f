"""Where an experiment's cells run: this machine (the default) or a Ray cluster.

Both executors take the same list of :class:`~emobridge.experiments.cells.CellJob` and
return one :class:`~emobridge.experiments.cells.CellOutcome` per cell, in completion order
(each cell runs through :func:`~emobridge.experiments.cells.execute_cell`):

* :class:`LocalExecutor` runs the cells in this process (``jobs == 1``) or in ``jobs``
  spawned worker processes (``emobridge run --jobs N``); workers exit on their own when
  the parent process dies.
* :class:`RayExecutor` submits every cell as a Ray task asking for ``threads`` CPUs (and one
  GPU when the device is CUDA). The cells read the manifest and the feature store and write
  their results under the run folder, so on a cluster these paths must be on a filesystem
  every node mounts at the same path. A cell's own error is recorded by the cell as locally;
  a worker that dies is recorded like a dead pool worker; Ctrl-C / SIGTERM cancel the
  outstanding tasks (finished cells stay on disk).

Ray is optional (``pip install emobridge[ray]``) and imported only when used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, Protocol

from emobridge.errors import ConfigError
from emobridge.experiments.cells import (
    CellJob,
    CellOutcome,
    Log,
    cell_folder,
    execute_cell,
    fail_fast_error,
    log_outcome,
    preloaded_manifest,
)
from emobridge.experiments.results import write_cell_error
from emobridge.raycluster import check_address, import_ray, ray_session

if TYPE_CHECKING:
    import pandas as pd

EXECUTORS = ("local", "ray")


class CellExecutor(Protocol):
    """Runs cells; see the module docstring."""

    def session(self, threads: int) -> contextlib.AbstractContextManager[Any]:
        """Context held for a whole run (a Ray connection; nothing locally)."""
        ...

    def run(self, jobs_list: list[CellJob], threads: int, fail_fast: bool, logger: Log,
            manifest: pd.DataFrame) -> list[CellOutcome]:
        """Run every job; raise :class:`ExperimentError` at the first failure with
        ``fail_fast``; ``KeyboardInterrupt`` stops the outstanding cells."""
        ...


@dataclasses.dataclass
class LocalExecutor:
    """Cells in this process (``jobs == 1``) or in ``jobs`` spawned worker processes."""

    jobs: int = 1

    def session(self, threads: int) -> contextlib.AbstractContextManager[Any]:
        """Nothing to set up."""
        return contextlib.nullcontext()

    def run(self, jobs_list: list[CellJob], threads: int, fail_fast: bool, logger: Log,
            manifest: pd.DataFrame) -> list[CellOutcome]:
        """Run the cells in this process (``jobs == 1`` or a single cell) or in ``jobs``
        spawned workers, each with ``threads`` torch threads."""
        if not jobs_list:
            return []
        if self.jobs == 1 or len(jobs_list) == 1:
            return _execute_here(jobs_list, threads, fail_fast, logger, manifest)
        return _execute_pool(jobs_list, self.jobs, threads, fail_fast, logger)


@dataclasses.dataclass
class RayExecutor:
    """Each cell a Ray task on the cluster at ``address`` (``None``: a local instance
    with ``jobs`` cells' worth of CPUs, unless Ray is initialised already)."""

    address: str | None = None
    jobs: int = 1

    def session(self, threads: int) -> contextlib.AbstractContextManager[Any]:
        """Ray for a whole run (extraction and cells share one local instance)."""
        return ray_session(self.address, num_cpus=self.jobs * threads)

    def run(self, jobs_list: list[CellJob], threads: int, fail_fast: bool, logger: Log,
            manifest: pd.DataFrame) -> list[CellOutcome]:
        """Run every cell as a Ray task (``manifest`` is unused: the tasks read the file)."""
        if not jobs_list:
            return []
        with self.session(threads) as ray:
            return _run_ray_cells(ray, jobs_list, threads, fail_fast, logger)


def make_executor(name: str, jobs: int = 1, address: str | None = None) -> CellExecutor:
    """The executor called ``name`` (``local`` or ``ray``); Ray must be importable."""
    if name == "local":
        if address is not None:
            raise ConfigError("--address needs --executor ray")
        return LocalExecutor(jobs)
    if name == "ray":
        import_ray()
        return RayExecutor(check_address(address), jobs)
    raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def _ray_cell(job: CellJob, threads: int) -> CellOutcome:
    """A cell in a Ray worker (runs there; Ray reuses workers, so set threads each time)."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    return execute_cell(job)


def _submit(remote: Any, job: CellJob, threads: int) -> Any:
    gpus = 1 if job.device.startswith("cuda") else 0
    if gpus:  # Ray hides every other GPU from the task: its one GPU is cuda:0 there
        job = dataclasses.replace(job, device="cuda")
    # max_retries=0: a cell whose worker died is recorded as failed, as with local workers
    return remote.options(num_cpus=threads, num_gpus=gpus, max_retries=0,
                          name=f"cell:{job.key.id}").remote(job, threads)


def _ray_outcome(ray: Any, ref: Any, job: CellJob) -> CellOutcome:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        # The worker died (killed, out of memory, node lost): record it like a cell error.
        write_cell_error(cell_folder(job.run_dir, job.key), job.key, job.cell_hash, exc,
                         traceback.format_exc())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CellOutcome(job.key, "failed", 0.0, error=f"Ray worker failed: {first}")


def _run_ray_cells(ray: Any, jobs_list: list[CellJob], threads: int, fail_fast: bool,
                   logger: Log) -> list[CellOutcome]:
    outcomes: list[CellOutcome] = []
    remote = ray.remote(_ray_cell)
    refs = {_submit(remote, job, threads): job for job in jobs_list}
    remaining = list(refs)
    logger(f"ray: {len(refs)} cell task(s) submitted, {threads} CPU(s) each; cluster "
           f"{ray.cluster_resources().get('CPU', 0):.0f} CPU(s)")
    try:
        while remaining:
            # A timeout keeps the main thread responsive to SIGINT / SIGTERM.
            done, remaining = ray.wait(remaining, num_returns=1, timeout=0.5)
            for ref in done:
                outcome = _ray_outcome(ray, ref, refs[ref])
                outcomes.append(outcome)
                log_outcome(logger, outcome, len(outcomes), len(jobs_list))
                if fail_fast and outcome.status != "ok":
                    raise fail_fast_error(outcome, refs[ref].run_dir)
    finally:
        # Interrupted or failing fast: drop the queued cells and kill the running ones (as
        # the local pool terminates its workers); a killed cell wrote nothing final.
        for ref in remaining:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return outcomes


# ---------------------------------------------------------------------- local cells


def _execute_here(jobs_list: list[CellJob], threads: int, fail_fast: bool, logger: Log,
                  manifest: pd.DataFrame) -> list[CellOutcome]:
    import torch

    outcomes: list[CellOutcome] = []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # In-process: the cells take the manifest already in memory.
        with preloaded_manifest(jobs_list[0].manifest_path, manifest):
            for job in jobs_list:
                outcome = execute_cell(job)
                outcomes.append(outcome)
                log_outcome(logger, outcome, len(outcomes), len(jobs_list))
                if fail_fast and outcome.status != "ok":
                    raise fail_fast_error(outcome, job.run_dir)
    finally:
        torch.set_num_threads(previous_threads)
    return outcomes


def _outcome(fut: Future, job: CellJob) -> CellOutcome:
    try:
        return fut.result()
    except BrokenProcessPool as exc:
        # The worker died (killed, out of memory): record it like a cell error.
        write_cell_error(cell_folder(job.run_dir, job.key), job.key, job.cell_hash, exc,
                         traceback.format_exc())
        return CellOutcome(job.key, "failed", 0.0, error=f"worker process died: {exc}")


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """Cancel queued cells and terminate running workers (``shutdown`` alone would wait for
    the running cells to finish)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=5)


def _execute_pool(jobs_list: list[CellJob], jobs: int, threads: int, fail_fast: bool,
                  logger: Log) -> list[CellOutcome]:
    outcomes: list[CellOutcome] = []
    executor = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads, os.getpid()))
    finished = False
    try:
        futures: dict[Future, CellJob] = {executor.submit(execute_cell, j): j
                                          for j in jobs_list}
        remaining = set(futures)
        while remaining:
            # A timeout keeps the main thread responsive to SIGINT / SIGTERM.
            done, remaining = wait(remaining, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                outcome = _outcome(fut, futures[fut])
                outcomes.append(outcome)
                log_outcome(logger, outcome, len(outcomes), len(jobs_list))
                if fail_fast and outcome.status != "ok":
                    raise fail_fast_error(outcome, futures[fut].run_dir)
        finished = True
    finally:
        if finished:
            executor.shutdown(wait=True)
        else:
            _stop_workers(executor)
    return outcomes


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker exit when the process that started it dies (``kill -9`` included):
    the kernel's parent-death signal on Linux, and a watchdog thread everywhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="emobridge-parent-watchdog", daemon=True).start()


def _init_worker(threads: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: the parent decides and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
