"""Hostile or malformed model files and options (issue 9), each through the CLI.

Every case ends with exit status 1, a single ``error: ...`` line and no traceback, and the
model tables exactly as they were (a model stored before the attempt stays, nothing is
added). Names are data: ``x[/]`` is a fine name and prints as written.
"""

from __future__ import annotations

import http.server
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.warehouse.database import engine_for, read_frame

runner = CliRunner()
MODEL_TABLES = ("model", "training", "layer", "filter")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def table_rows(url: str) -> dict[str, list[tuple]]:
    with engine_for(url) as engine, engine.connect() as connection:
        return {
            table: sorted(read_frame(connection, f"SELECT * FROM {table}").rows(), key=repr)
            for table in MODEL_TABLES
        }


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def stored_url(duckdb_url, tmp_path) -> str:
    """A database holding one model already, so that "unchanged" means something."""
    path = tmp_path / "first.pt"
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3)}, path)
    result = invoke("--db", duckdb_url, "ingest", "checkpoint", path, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    return duckdb_url


def ingest_checkpoint(url: str, path: Path, *options: object):
    return invoke("--db", url, "ingest", "checkpoint", path, "--device", "cpu", "-q", *options)


# --- torch files whose views claim more than the file holds ----------------------------------


@pytest.mark.parametrize(
    "shape",
    [(10**6, 10**6, 3, 3), (20_000, 1_000, 3, 3)],
    ids=["1e12-filters", "20M-filters"],
)
def test_expanded_view_is_refused(stored_url, tmp_path, shape):
    path = tmp_path / "expanded.pt"
    torch.save({"conv.weight": torch.zeros(1, 1, 1, 1).expand(*shape)}, path)
    assert path.stat().st_size < 2_000
    before = table_rows(stored_url)
    assert_one_line_error(ingest_checkpoint(stored_url, path), "expanded or overlapping view")
    assert table_rows(stored_url) == before


def test_weights_larger_than_the_file_allows_are_refused(stored_url, tmp_path):
    # A real storage, shared by two layers as strided views of 9 elements each: owned data,
    # but more filters than bytes (the limit relative to the file's bytes).
    storage = torch.zeros(10_000, 9)
    state = {f"conv{i}.weight": storage.view(10_000, 1, 3, 3) for i in range(10)}
    path = tmp_path / "shared.pt"
    torch.save(state, path)
    before = table_rows(stored_url)
    assert_one_line_error(ingest_checkpoint(stored_url, path), "times allowed")
    assert table_rows(stored_url) == before


def test_zero_output_channels_are_refused(stored_url, tmp_path):
    path = tmp_path / "empty.pt"
    torch.save({"a.weight": torch.randn(4, 3, 3, 3), "b.weight": torch.zeros(0, 4, 3, 3)}, path)
    before = table_rows(stored_url)
    assert_one_line_error(ingest_checkpoint(stored_url, path), "0 output or input channels")
    assert table_rows(stored_url) == before


# --- ONNX Conv weights: absurd or negative dims, bad groups, quantized --------------------


def raw_tensor(dims: list[int], data: bytes, dtype: int = TensorProto.FLOAT) -> TensorProto:
    tensor = TensorProto(name="w", data_type=dtype, raw_data=data)
    tensor.dims.extend(dims)
    return tensor


def conv_file(path: Path, weight: TensorProto, **attributes: object) -> Path:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attributes)
    graph = helper.make_graph(
        [node],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[weight],
    )
    onnx.save(helper.make_model(graph), path)
    return path


FLOAT_WEIGHT = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w")
ONNX_CASES = {
    "absurd-dims-no-data": (raw_tensor([100_000, 100_000, 3, 3], b""), {}, "does not fit"),
    "absurd-dims-little-data": (
        raw_tensor([100_000, 100_000, 3, 3], b"\0" * 64),
        {},
        "does not fit",
    ),
    "negative-dims": (raw_tensor([-4, 4, 3, 3], b"\0" * 576), {}, "negative dimensions"),
    "group-0": (FLOAT_WEIGHT, {"group": 0}, "groups=0"),
    "group-minus-1": (FLOAT_WEIGHT, {"group": -1}, "groups=-1"),
    "group-not-dividing": (FLOAT_WEIGHT, {"group": 3}, "groups=3"),
    "int8": (
        numpy_helper.from_array(np.ones((4, 4, 3, 3), np.int8), "w"),
        {},
        "INT8, a quantized weight",
    ),
    "zero-out-channels": (
        numpy_helper.from_array(np.ones((0, 4, 3, 3), np.float32), "w"),
        {},
        "0 output or input channels",
    ),
}


@pytest.mark.parametrize(("weight", "attributes", "expected"), ONNX_CASES.values(), ids=ONNX_CASES)
def test_malformed_onnx_convs_are_refused(stored_url, tmp_path, weight, attributes, expected):
    path = conv_file(tmp_path / "hostile.onnx", weight, **attributes)
    before = table_rows(stored_url)
    result = invoke("--db", stored_url, "ingest", "onnx", path, "--device", "cpu", "-q")
    assert_one_line_error(result, expected)
    assert table_rows(stored_url) == before


def test_a_well_formed_onnx_conv_is_stored(duckdb_url, tmp_path):
    # Control for the cases above: the same graph with a sane weight goes in.
    path = conv_file(tmp_path / "fine.onnx", FLOAT_WEIGHT, group=2)
    result = invoke("--db", duckdb_url, "ingest", "onnx", path, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert "1 layer, 16 filters" in result.output


# --- Names are data --------------------------------------------------------------------------


def test_a_name_with_markup_characters_is_stored_and_printed_as_written(duckdb_url, tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3)}, path)
    for name in ["x[/]", "[bold]y", ":x: z"]:
        result = ingest_checkpoint(duckdb_url, path, "--name", name, "--force")
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"{name}: ingested"), result.output
        listed = invoke("--db", duckdb_url, "layers", name)
        assert listed.exit_code == 0 and name in listed.output, listed.output
    models = invoke("--db", duckdb_url, "models")
    assert models.exit_code == 0
    assert all(name in models.output for name in ["x[/]", "[bold]y", ":x: z"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [("n" * 100_000, "100,000 characters long"), ("a\nb", "control characters"), (" ", "empty")],
    ids=["100k-characters", "newline", "blank"],
)
def test_unusable_names_are_refused(stored_url, tmp_path, name, expected):
    path = tmp_path / "m.pt"
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3)}, path)
    before = table_rows(stored_url)
    line = assert_one_line_error(ingest_checkpoint(stored_url, path, "--name", name), expected)
    assert len(line) < 300
    assert table_rows(stored_url) == before


# --- Training figures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--eps", "1e400"], "not a finite positive attack budget"),
        (["--eps", "-1"], "not a finite positive attack budget"),
        (["--eps", "0"], "not a finite positive attack budget"),
        (["--clean-acc", "150"], "clean_acc 150 is not a percentage"),
        (["--clean-acc", "-5"], "clean_acc -5 is not a percentage"),
        (["--clean-acc", "nan"], "clean_acc nan is not a percentage"),
        (["--robust-acc", "inf"], "robust_acc inf is not a percentage"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_out_of_range_training_figures_are_refused(stored_url, tmp_path, options, expected):
    path = tmp_path / "m.pt"
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3)}, path)
    before = table_rows(stored_url)
    assert_one_line_error(ingest_checkpoint(stored_url, path, *options), expected)
    assert table_rows(stored_url) == before


def test_figures_at_the_bounds_are_accepted(duckdb_url, tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3)}, path)
    result = ingest_checkpoint(
        duckdb_url,
        path,
        "--training",
        "adversarial",
        "--clean-acc",
        "100",
        "--robust-acc",
        "0",
        "--eps",
        "8/255",
    )
    assert result.exit_code == 0, result.output


# --- Leaderboard URLs that answer badly ------------------------------------------------------


class _Hostile(http.server.BaseHTTPRequestHandler):
    mode = "404"

    def do_GET(self):  # noqa: N802 (the base class's name)
        if self.mode == "404":
            self.send_error(404)
        elif self.mode == "short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"clean_acc": "9')
            self.wfile.flush()
            self.close_connection = True
        else:  # reset: close with SO_LINGER 0, so the client gets a TCP RST
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(params=["404", "short", "reset"])
def hostile_server(request) -> Iterator[tuple[str, str]]:
    handler = type("Handler", (_Hostile,), {"mode": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield request.param, f"http://127.0.0.1:{server.server_address[1]}/model_info"
    finally:
        server.shutdown()
        server.server_close()


def test_model_info_url_that_answers_badly_is_one_line(stored_url, tmp_path, hostile_server):
    mode, url = hostile_server
    expected = {"404": "no leaderboard file", "short": "broke off", "reset": "cannot fetch"}
    before = table_rows(stored_url)
    result = invoke(
        "--db",
        stored_url,
        "ingest",
        "robustbench",
        "--dataset",
        "cifar10",
        "--model",
        "Standard",
        "--model-dir",
        tmp_path / "no-cache",
        "--model-info",
        url,
        "-q",
    )
    assert_one_line_error(result, expected[mode], "--model-info" if mode == "404" else "")
    assert table_rows(stored_url) == before


def test_all_entries_without_a_leaderboard_file_are_named(tmp_path):
    from filterdb.ingest.zoo_selection import zoo_selection

    handler = type("Handler", (_Hostile,), {"mode": "404"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        selection = zoo_selection(
            dataset="cifar10",
            threat_model="L2",
            names=None,
            model_dir=tmp_path,
            model_info=f"http://127.0.0.1:{server.server_address[1]}/model_info",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert selection.candidates == []  # no checkpoint in tmp_path
    assert "Standard" in selection.not_on_leaderboard
    assert len(selection.not_on_leaderboard) == len(selection.missing)
