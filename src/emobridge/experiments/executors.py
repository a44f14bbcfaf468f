"""Where an experiment's cells run: this machine (the default) or a Ray cluster.

Both executors take the same list of :class:`~emobridge.experiments.runner.CellJob` and
return one :class:`~emobridge.experiments.runner.CellOutcome` per cell, in completion order:

* :class:`LocalExecutor` runs the cells in this process (``jobs == 1``) or in ``jobs``
  spawned worker processes (``emobridge run --jobs N``).
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
import logging
import re
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from emobridge.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from emobridge.experiments.runner import CellJob, CellOutcome

Log = Callable[[str], None]

EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray needs the ray extra: pip install emobridge[ray]"
#: ``auto`` (the cluster this node belongs to), ``ray://HOST:PORT`` (Ray client) or
#: ``HOST:PORT`` (the head's GCS address)
ADDRESS_RE = re.compile(r"^(auto|ray://[A-Za-z0-9_.\-\[\]:]+:\d+|[A-Za-z0-9_.\-\[\]:]+:\d+)$")


def check_address(address: str | None) -> str | None:
    """``address`` if it is a Ray address emobridge accepts, else :class:`ConfigError`."""
    if address is None:
        return None
    if not ADDRESS_RE.match(address):
        raise ConfigError(f"--address {address!r}: expected auto, ray://HOST:PORT or "
                          "HOST:PORT")
    return address


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` / ``ray://HOST:PORT`` address nothing answers on within
    ``timeout_s`` (``ray.init`` itself retries for minutes before it gives up)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: "
                          f"{exc.strerror or exc}") from None


def import_ray() -> Any:
    """The ``ray`` module, or one :class:`ConfigError` line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Yield the ``ray`` module connected to a cluster.

    An already initialised Ray is used as it is. Otherwise ``address`` connects to a running
    cluster, and no address starts a private local instance with ``num_cpus`` CPUs; either
    is shut down on exit.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    check_address(address)
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address is None:
        options["num_cpus"] = num_cpus
    else:
        check_reachable(address)
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise ConfigError(f"cannot connect to {where}: {exc}".splitlines()[0]) from None
    try:
        yield ray
    finally:
        ray.shutdown()


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
        from emobridge.experiments.runner import _execute

        return _execute(jobs_list, self.jobs, threads, fail_fast, logger, manifest)


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
    import os

    import torch

    from emobridge.experiments.runner import execute_cell

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
    from emobridge.experiments.runner import CellOutcome, cell_folder, write_cell_error

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
    from emobridge.experiments.runner import _fail_fast_error, _log_outcome

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
                _log_outcome(logger, outcome, len(outcomes), len(jobs_list))
                if fail_fast and outcome.status != "ok":
                    raise _fail_fast_error(outcome, refs[ref].run_dir)
    finally:
        # Interrupted or failing fast: drop the queued cells and kill the running ones (as
        # the local pool terminates its workers); a killed cell wrote nothing final.
        for ref in remaining:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return outcomes
