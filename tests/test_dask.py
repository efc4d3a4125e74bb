"""Metrics on Dask equal local metrics bit for bit: a LocalCluster, and real processes.

The oracle is ``--engine local``: every cached (layer, metric, params, version) with its
value's bits and its support. Faults: a worker killed during a task, a worker reporting
another filterdb version, a scheduler that is not there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import torch
from test_cli_foundation import assert_one_line_error
from test_export import store
from test_lake import free_port
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.metrics import cache
from filterdb.metrics.engine import EngineError, parse_engine
from filterdb.warehouse.database import engine_for, read_frame

distributed = pytest.importorskip("distributed")
# Workers unpickle what this module defines (plugins, functions) by value: they cannot
# import the tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
runner = CliRunner()


def store_with_a_large_layer(url: str, folder: Path) -> None:
    """The two small trained models and one whose layer is big enough for torch threads."""
    store(url, folder)
    torch.manual_seed(5)
    state = {"conv.weight": torch.randn(256, 128, 3, 3), "head.weight": torch.randn(10, 256)}
    torch.save(state, folder / "wide.pt")
    ingest(checkpoint_candidate(folder / "wide.pt", name="wide"), url=url, device="cpu")


def cache_bits(url: str) -> list[tuple]:
    """Every cached value with its bits: what must be equal between engines."""
    with engine_for(url) as engine, engine.connect() as connection:
        frame = read_frame(
            connection,
            "SELECT layer_id, metric, params, version, value, support FROM metric_cache "
            "ORDER BY layer_id, metric, params",
        )
    return [
        (*row[:4], None if row[4] is None else float(row[4]).hex(), row[5])
        for row in frame.iter_rows()
    ]


def test_dask_metrics_equal_local_bit_for_bit(db_url, tmp_path, cluster):
    _, engine = cluster
    store_with_a_large_layer(db_url, tmp_path)
    local = cache.compute_metrics(url=db_url, device="cpu")
    expected = cache_bits(db_url)
    result = cache.compute_metrics(
        url=db_url, engine=engine, lake=tmp_path / "lake", recompute=True
    )
    assert (result.n_layers, result.n_values) == (local.n_layers, local.n_values)
    assert cache_bits(db_url) == expected
    assert cache.compute_metrics(url=db_url, engine=engine, lake=tmp_path / "lake").n_layers == 0


class KillFirstTask(distributed.WorkerPlugin):
    """Kills its worker process (SIGKILL) when the first metric task starts, once."""

    def __init__(self, flag: str):
        self.flag = flag

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and "file_metrics" in str(key):
            try:
                os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_run_changes_nothing(duckdb_url, tmp_path, cluster):
    local_cluster, engine = cluster
    store_with_a_large_layer(duckdb_url, tmp_path)
    cache.compute_metrics(url=duckdb_url, device="cpu")
    expected = cache_bits(duckdb_url)
    flag = tmp_path / "killed"
    with distributed.Client(local_cluster) as client:
        client.register_plugin(KillFirstTask(str(flag)), name="kill-first-task")
        try:
            cache.compute_metrics(
                url=duckdb_url, engine=engine, lake=tmp_path / "lake", recompute=True
            )
        finally:
            client.unregister_worker_plugin("kill-first-task")
        client.wait_for_workers(2, timeout=60)
    assert flag.exists()  # a worker did die during a task
    assert cache_bits(duckdb_url) == expected


def pretend_other_version() -> None:
    from filterdb.metrics import tasks

    tasks.__version__ = "0.0.0-other"


def restore_version() -> None:
    import filterdb
    from filterdb.metrics import tasks

    tasks.__version__ = filterdb.__version__


def test_workers_of_another_version_are_refused(duckdb_url, tmp_path, cluster):
    local_cluster, engine = cluster
    store(duckdb_url, tmp_path)
    with distributed.Client(local_cluster) as client:
        worker = sorted(client.scheduler_info()["workers"])[0]
        client.run(pretend_other_version, workers=[worker])
        try:
            result = runner.invoke(
                app,
                ["--db", duckdb_url, "metrics", "--engine", engine, "--lake", str(tmp_path / "l")],
            )
        finally:
            client.run(restore_version)
    assert_one_line_error(result, worker, "0.0.0-other", "this client filterdb 0.1.0")
    assert cache_bits(duckdb_url) == []


def test_an_unreachable_scheduler_is_one_line(duckdb_url, tmp_path):
    store(duckdb_url, tmp_path)
    port = free_port()
    result = runner.invoke(
        app, ["--db", duckdb_url, "metrics", "--engine", f"dask://127.0.0.1:{port}"]
    )
    assert_one_line_error(
        result, f"no Dask scheduler answers at tcp://127.0.0.1:{port}", "dask scheduler --port"
    )


def test_engine_specs():
    assert parse_engine("dask-local:3").workers == 3
    assert parse_engine("dask://node7:8786").address == "tcp://node7:8786"
    with pytest.raises(EngineError, match="use local, dask-local"):
        parse_engine("spark://x:1")


def wait_for_port(port: int, process: subprocess.Popen) -> None:
    for _ in range(600):
        assert process.poll() is None, "the scheduler exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_real_scheduler_and_worker_processes(duckdb_url, tmp_path):
    store_with_a_large_layer(duckdb_url, tmp_path)
    dask = str(Path(sys.executable).parent / "dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = ["--no-dashboard", "--host", "127.0.0.1"]
    processes = [subprocess.Popen([dask, "scheduler", "--port", str(port), *common], cwd=tmp_path)]
    try:
        wait_for_port(port, processes[0])
        for _ in range(2):
            worker = [dask, "worker", address, "--nthreads", "1", "--nworkers", "1", *common]
            processes.append(subprocess.Popen(worker, cwd=tmp_path))
        # The CLI in its own process: the engine must work from a plain script too.
        metrics = [sys.executable, "-m", "filterdb.cli.main", "--db", duckdb_url, "metrics"]
        engine = ["--engine", f"dask://127.0.0.1:{port}", "--lake", str(tmp_path / "lake")]
        done = subprocess.run([*metrics, *engine, "-q"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "computed 70 values for 7 layers of 3 models" in done.stdout
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    on_dask = cache_bits(duckdb_url)
    # The local run in a process like the first (same environment: a LocalCluster in this
    # process may have set OMP_NUM_THREADS, and torch's float64 sums follow the threads).
    local = [*metrics, "--engine", "local", "--device", "cpu", "--recompute", "-q"]
    done = subprocess.run(local, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert cache_bits(duckdb_url) == on_dask
