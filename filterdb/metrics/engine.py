"""Where work runs: ``local`` (in this process), or a Dask cluster.

``--engine`` / ``FILTERDB_ENGINE`` takes ``local`` (the default), ``dask-local[:N]`` (a
``LocalCluster`` of N worker processes, one thread each, on 127.0.0.1, no dashboard;
N defaults to the CPU count) or ``dask://HOST:PORT`` (an existing scheduler). Dask is the
optional extra ``filterdb[dask]``; it is imported only when a Dask engine is asked for.
Before any work the workers' filterdb and metric versions are compared with the client's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from filterdb.errors import FilterdbError

if TYPE_CHECKING:
    from distributed import Client

ENGINE_ENVIRONMENT_VARIABLE = "FILTERDB_ENGINE"
_DASK_LOCAL = re.compile(r"dask-local(?::(\d+))?")
_DASK_ADDRESS = re.compile(r"dask://([^:/]+):(\d+)")
# How long a client waits for a scheduler to answer and for its first worker.
CONNECT_TIMEOUT_S = 10


class EngineError(FilterdbError):
    """An engine spec that cannot be used: malformed, unreachable, or mismatched workers."""


@dataclass(frozen=True)
class Engine:
    """A parsed ``--engine``: ``kind`` is local, dask-local or dask."""

    kind: str
    workers: int | None = None
    address: str | None = None

    @property
    def is_local(self) -> bool:
        """Whether the work runs in this process."""
        return self.kind == "local"


def parse_engine(spec: str | None = None) -> Engine:
    """The engine named by ``spec``, else ``$FILTERDB_ENGINE``, else ``local``."""
    text = (spec or os.environ.get(ENGINE_ENVIRONMENT_VARIABLE) or "local").strip()
    if text == "local":
        return Engine("local")
    if match := _DASK_LOCAL.fullmatch(text):
        workers = int(match.group(1)) if match.group(1) else (os.cpu_count() or 1)
        if workers < 1:
            raise EngineError(f"engine {text}: give at least one worker, e.g. dask-local:2")
        return Engine("dask-local", workers=workers)
    if match := _DASK_ADDRESS.fullmatch(text):
        return Engine("dask", address=f"tcp://{match.group(1)}:{match.group(2)}")
    raise EngineError(f"unknown engine {text!r}; use local, dask-local[:N] or dask://HOST:PORT")


@contextmanager
def dask_client(engine: Engine) -> Iterator[Client]:
    """A Dask client for ``engine`` whose workers run this filterdb (checked).

    A ``dask-local`` cluster is started here and closed on exit. Raises
    :class:`EngineError` (one line) when Dask is not installed, the scheduler does not
    answer, no worker joins, or a worker's versions differ from the client's.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise EngineError(
            "the Dask engines need the dask extra; install it with pip install 'filterdb[dask]'"
        ) from None
    if engine.kind == "dask-local":
        with (
            LocalCluster(
                n_workers=engine.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            check_workers(client)
            yield client
        return
    try:
        client = Client(engine.address, timeout=CONNECT_TIMEOUT_S)
    except OSError:
        port = engine.address.rsplit(":", 1)[1]
        raise EngineError(
            f"no Dask scheduler answers at {engine.address}; start one with "
            f"`dask scheduler --port {port}` and workers with `dask worker {engine.address}`"
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except TimeoutError:
            raise EngineError(
                f"the Dask scheduler at {engine.address} has no workers; start some with "
                f"`dask worker {engine.address}`"
            ) from None
        check_workers(client)
        yield client


def check_workers(client: Client) -> None:
    """Refuse workers whose filterdb or metric versions differ from this process's."""
    from filterdb.metrics import tasks

    mine = tasks.versions()
    for worker, theirs in sorted(client.run(tasks.versions).items()):
        if theirs != mine:
            raise EngineError(
                f"worker {worker} runs filterdb {_describe(theirs)}, this client filterdb "
                f"{_describe(mine)}; install the client's filterdb on every worker"
            )


def _describe(versions: dict) -> str:
    metrics = ",".join(f"{name}={v}" for name, v in sorted(versions["metrics"].items()))
    return f"{versions['filterdb']} (metrics {metrics})"
