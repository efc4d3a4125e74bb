"""timm, the Hugging Face Hub and safetensors: a real Hub cache, real timm, real downloads.

The Hub cache is laid out exactly as huggingface_hub lays it out
(``models--ORG--NAME/{blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> blob}``);
the download test runs huggingface_hub's own client against a server on 127.0.0.1.
The oracle for stored rows is the safetensors file read by ``safetensors.numpy`` (no
torch, no filterdb code).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as numpy_load_file
from safetensors.torch import save_file
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.warehouse.database import engine_for, read_frame

runner = CliRunner()

TIMM_NAME = "test_efficientnet.r160_in1k"  # timm's smallest CNN with Hub weights: 4,104 filters
TIMM_REPO = f"timm/{TIMM_NAME}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Write ``files`` into ``cache`` as huggingface_hub does; return the snapshot dir."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def safetensors_bytes(tensors: dict[str, torch.Tensor], tmp: Path) -> bytes:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def timm_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(TIMM_NAME, pretrained=False).state_dict()


TIMM_CONFIG = {
    "architecture": "test_efficientnet",
    "num_classes": 1000,
    "pretrained_cfg": {"tag": "r160_in1k", "license": "apache-2.0", "input_size": [3, 160, 160]},
}


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("timm")
    return {
        "model.safetensors": safetensors_bytes(timm_state_dict(), tmp / "w.safetensors"),
        "config.json": json.dumps(TIMM_CONFIG).encode(),
    }


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, timm_files) -> Path:
    cache = tmp_path / "hub"
    put_repo(cache, TIMM_REPO, timm_files)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return cache


def invoke(url: str, *args: str):
    return runner.invoke(app, ["--db", url, "ingest", *args, "--quiet"])


def stored_filters(url: str, model: str) -> dict[str, np.ndarray]:
    with engine_for(url) as engine, engine.connect() as connection:
        frame = read_frame(
            connection,
            "SELECT layer_name, w0, w1, w2, w3, w4, w5, w6, w7, w8 FROM v_filters "
            "WHERE model_name = :model ORDER BY layer_id, filter_index",
            {"model": model},
        )
    return {
        name: group.drop("layer_name").to_numpy()
        for (name,), group in frame.group_by("layer_name", maintain_order=True)
    }


def query(url: str, sql: str, **parameters):
    with engine_for(url) as engine, engine.connect() as connection:
        return read_frame(connection, sql, parameters)


def layer_rows(url: str, model: str) -> list[tuple]:
    return query(
        url,
        "SELECT layer_name, graph_depth, conv_depth, depth_bin, in_channels, out_channels, "
        "groups, stride, n_filters, depth_method FROM v_layers WHERE model_name = :m "
        "ORDER BY conv_index",
        m=model,
    ).rows()


def counts(url: str) -> tuple[int, int, int]:
    frame = query(
        url,
        "SELECT (SELECT COUNT(*) FROM model) AS m, (SELECT COUNT(*) FROM layer) AS l, "
        "(SELECT COUNT(*) FROM filter) AS f",
    )
    return frame.row(0)


def oracle_3x3(path: Path) -> dict[str, np.ndarray]:
    """The 3x3 weights of a safetensors file as float32 (n, 9) arrays, read without torch."""
    tensors = numpy_load_file(str(path))
    return {
        key.removesuffix(".weight"): value.astype(np.float32).reshape(-1, 9)
        for key, value in tensors.items()
        if value.ndim == 4 and value.shape[2:] == (3, 3)
    }


# --- timm and hf from a filled cache, offline -----------------------------------------------


def test_timm_and_hf_offline_equal_the_file_and_the_arch_checkpoint(db_url, hub_cache):
    snapshot = hub_cache / f"models--timm--{TIMM_NAME}" / "snapshots" / COMMIT
    weights = snapshot / "model.safetensors"
    result = invoke(db_url, "timm", TIMM_NAME)
    assert result.exit_code == 0, result.output
    assert f"timm:{TIMM_NAME}: ingested, 6 layers, 4,104 filters" in result.output
    result = invoke(db_url, "hf", TIMM_REPO)
    assert result.exit_code == 0, result.output
    result = invoke(
        db_url, "checkpoint", str(weights), "--arch", "timm:test_efficientnet", "--name", "ref"
    )
    assert result.exit_code == 0, result.output

    expected = oracle_3x3(weights)
    reference_layers = layer_rows(db_url, "ref")
    assert reference_layers[0][-1] == "graph"
    for model in (f"timm:{TIMM_NAME}", f"hf:{TIMM_REPO}"):
        got = stored_filters(db_url, model)
        assert sorted(got) == sorted(expected)
        for layer, rows in expected.items():
            assert got[layer].tobytes() == rows.tobytes(), (model, layer)
        assert layer_rows(db_url, model) == reference_layers

    models = query(
        db_url,
        "SELECT model_name, source, architecture, family, training_type, training_dataset, "
        "pretraining_dataset, source_uri, license, checkpoint_sha256 FROM v_models "
        "ORDER BY model_name",
    )
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    by_name = {row[0]: row for row in models.rows()}
    uri = f"hf://{TIMM_REPO}@{COMMIT}"
    assert by_name[f"timm:{TIMM_NAME}"][1:] == (
        "timm", "test_efficientnet", "EfficientNet", "normal", "imagenet", None, uri, None, sha
    )  # fmt: skip
    assert by_name[f"hf:{TIMM_REPO}"][1:] == (
        "hf", "test_efficientnet", "EfficientNet", "normal", "imagenet", None, uri,
        "apache-2.0", sha,
    )  # fmt: skip
    # Unchanged: skipped by hash.
    assert "skipped" in invoke(db_url, "timm", TIMM_NAME).output


def test_timm_tags_give_training_and_pretraining_datasets():
    from filterdb.ingest.sources.timm_hub import tag_datasets

    assert tag_datasets("a1_in1k") == ("imagenet", None)
    assert tag_datasets("in22k_ft_in1k") == ("imagenet", "imagenet-22k")
    assert tag_datasets("in12k_ft_in1k_384") == ("imagenet", "imagenet-12k")
    assert tag_datasets("fb_swsl_ig1b_ft_in1k") == ("imagenet", "instagram-1b")
    assert tag_datasets("in21k") == ("imagenet-22k", None)
    assert tag_datasets("tv_in1k") == ("imagenet", None)


def test_offline_without_the_file_names_the_cache_path(db_url, tmp_path, monkeypatch):
    FakeHub.files, FakeHub.requests = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # A reachable server: offline must not ask it anything.
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        result = invoke(db_url, "timm", "resnet18.a1_in1k")
    finally:
        server.shutdown()
    assert FakeHub.requests == []
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(tmp_path / "empty" / "models--timm--resnet18.a1_in1k") in lines[0]
    assert "HF_HUB_OFFLINE is set" in lines[0] and "unset HF_HUB_OFFLINE" in lines[0]
    assert counts(db_url) == (0, 0, 0)


def test_an_unreachable_hub_is_one_line(db_url, tmp_path, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = invoke(db_url, "hf", "org/unreachable")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: cannot reach the Hub for model.safetensors")
    assert counts(db_url) == (0, 0, 0)


@pytest.mark.parametrize(
    ("spec", "closest"), [("resnet5O.a1_in1k", "resnet50.a1_in1k"), ("resnet18.nope", "resnet18.")]
)
def test_unknown_timm_name_lists_the_closest(db_url, hub_cache, spec, closest):
    result = invoke(db_url, "timm", spec)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "closest: " in result.output
    assert closest in result.output


# --- the download path: huggingface_hub's client against a local server -------------------


class FakeHub(BaseHTTPRequestHandler):
    """Answers ``/<repo>/resolve/<revision>/<file>`` as the Hub does, for HEAD and GET."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def _answer(self, with_body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        repo, _, rest = self.path.lstrip("/").partition("/resolve/")
        name = rest.partition("/")[2]
        data = self.files.get(f"{repo}/{name}")
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
        self._answer(False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(True)

    def log_message(self, *args) -> None:
        pass


def test_download_into_an_empty_cache_through_hf_endpoint(
    db_url, tmp_path, monkeypatch, timm_files
):
    FakeHub.files = {f"{TIMM_REPO}/{name}": data for name, data in timm_files.items()}
    FakeHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "fresh"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        result = invoke(db_url, "timm", TIMM_NAME)
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert f"GET /{TIMM_REPO}/resolve/main/model.safetensors" in FakeHub.requests
    cached = tmp_path / "fresh" / f"models--timm--{TIMM_NAME}" / "snapshots" / COMMIT
    weights = cached / "model.safetensors"
    assert weights.is_symlink() and weights.read_bytes() == timm_files["model.safetensors"]
    got = stored_filters(db_url, f"timm:{TIMM_NAME}")
    assert all(got[k].tobytes() == v.tobytes() for k, v in oracle_3x3(weights).items())


# --- sharded safetensors, dtypes -------------------------------------------------------------


def conv_state_dict(dtype: torch.dtype, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"stem.weight": (8, 3, 3, 3), "block.weight": (8, 8, 3, 3), "head.weight": (10, 8)}
    tensors = {k: torch.randn(s, generator=generator).to(dtype) for k, s in shapes.items()}
    tensors["block.bias"] = torch.zeros(8, dtype=dtype)
    return tensors


def write_sharded(directory: Path, tensors: dict[str, torch.Tensor], n_shards: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    keys = list(tensors)
    weight_map = {}
    for i in range(n_shards):
        name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i::n_shards]}
        save_file({k: v.contiguous() for k, v in part.items()}, str(directory / name))
        weight_map.update(dict.fromkeys(part, name))
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sharded_half_precision_is_stored_as_exact_float32(db_url, tmp_path, dtype):
    tensors = conv_state_dict(dtype)
    index = write_sharded(tmp_path / "sharded", tensors)
    result = invoke(db_url, "checkpoint", str(index.parent), "--name", "half")
    assert result.exit_code == 0, result.output
    got = stored_filters(db_url, "half")
    for key in ("stem", "block"):
        expected = tensors[f"{key}.weight"].float().reshape(-1, 9).numpy()
        assert got[key].tobytes() == expected.tobytes()
    dtypes = query(db_url, "SELECT DISTINCT source_dtype FROM v_layers")["source_dtype"]
    assert dtypes.to_list() == [str(dtype).removeprefix("torch.")]
    # Identity: the shards in the order the index first names them.
    shards = list(dict.fromkeys(json.loads(index.read_text())["weight_map"].values()))
    digest = hashlib.sha256()
    for shard in shards:
        digest.update((index.parent / shard).read_bytes())
    stored = query(db_url, "SELECT checkpoint_sha256 FROM v_models")["checkpoint_sha256"]
    assert stored.to_list() == [digest.hexdigest()]
    # The index file works as well as its directory, and is the same model.
    assert "half: skipped" in invoke(db_url, "checkpoint", str(index), "--name", "half").output


def test_hf_sharded_repository_without_config_uses_key_order(db_url, hub_cache, tmp_path):
    tensors = conv_state_dict(torch.float16)
    staged = write_sharded(tmp_path / "staged", tensors).parent
    put_repo(hub_cache, "org/sharded", {p.name: p.read_bytes() for p in staged.iterdir()})
    result = invoke(db_url, "hf", "org/sharded")
    assert result.exit_code == 0, result.output
    assert "hf:org/sharded: ingested, 2 layers, 88 filters" in result.output
    rows = query(db_url, "SELECT depth_method, source_dtype FROM v_layers").rows()
    assert rows == [("key_order", "float16")] * 2


def test_float64_weights_are_rounded_and_the_rounding_is_said(db_url, tmp_path):
    tensors = conv_state_dict(torch.float64)
    path = tmp_path / "wide.safetensors"
    save_file(tensors, str(path))
    result = invoke(db_url, "checkpoint", str(path))
    assert result.exit_code == 0, result.output
    assert "note: 2 float64 layers stored as float32, rounded to nearest" in result.output
    got = stored_filters(db_url, "wide")
    assert (
        got["block"].tobytes() == tensors["block.weight"].float().reshape(-1, 9).numpy().tobytes()
    )
    notes = query(db_url, "SELECT note FROM ingest_log WHERE status = 'ingested'")["note"]
    assert notes.to_list()[0].startswith("2 float64 layers stored as float32")


# --- bad input: one line, exit 1, database unchanged -----------------------------------------


def corrupt(index: Path, how: str) -> Path:
    """Damage a two-shard checkpoint written by write_sharded in one way."""
    directory = index.parent
    document = json.loads(index.read_text())
    first = directory / "model-00001-of-00002.safetensors"
    if how == "html shard":
        first.write_bytes(b"<!DOCTYPE html><html><body>Too many requests</body></html>")
    elif how == "truncated shard":
        first.write_bytes(first.read_bytes()[:-100])
    elif how == "offsets do not match":
        data = first.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        key = next(k for k in header if k != "__metadata__")
        header[key]["data_offsets"][1] -= 4
        raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)
        first.write_bytes(data[:8] + raw[:n] + data[8 + n :])
    elif how in ("shard outside (..)", "shard outside (absolute)", "shard listed twice"):
        key = next(iter(document["weight_map"]))
        document["weight_map"][key] = {
            "shard outside (..)": "../outside.safetensors",
            "shard outside (absolute)": str(first),
            "shard listed twice": "./model-00002-of-00002.safetensors",
        }[how]
        if how == "shard listed twice":
            document["weight_map"] = {
                k: ("./" + v if v.startswith("model-00002") else v)
                for k, v in document["weight_map"].items()
            }
            document["weight_map"][key] = "model-00002-of-00002.safetensors"
        (directory.parent / "outside.safetensors").write_bytes(first.read_bytes())
        index.write_text(json.dumps(document))
    elif how == "missing shard":
        first.unlink()
    elif how == "tensor missing from its shard":
        document["weight_map"]["ghost.weight"] = first.name
        index.write_text(json.dumps(document))
    elif how == "tensor in two shards":
        second = directory / "model-00002-of-00002.safetensors"
        tensors = numpy_load_file(str(second)) | numpy_load_file(str(first))
        from safetensors.numpy import save_file as numpy_save

        numpy_save(tensors, str(second))
    elif how == "tensor not in the index":
        second = directory / "model-00002-of-00002.safetensors"
        from safetensors.numpy import save_file as numpy_save

        extra = {"stray.weight": np.zeros((2, 2, 3, 3), dtype=np.float16)}
        numpy_save(numpy_load_file(str(second)) | extra, str(second))
    return index


BAD_SHARDS = {
    "html shard": "HTML page",
    "truncated shard": "truncated",
    "offsets do not match": "header does not match the file",
    "shard outside (..)": "outside its directory",
    "shard outside (absolute)": "outside its directory",
    "shard listed twice": "lists shard model-00002-of-00002.safetensors twice",
    "missing shard": "is missing at",
    "tensor missing from its shard": "listed in the index but missing",
    "tensor in two shards": "is in two shards",
    "tensor not in the index": "holds tensor stray.weight, which the index does not map",
}


@pytest.mark.parametrize("how", list(BAD_SHARDS))
def test_bad_sharded_checkpoints_are_refused_in_one_line(db_url, tmp_path, how):
    index = write_sharded(tmp_path / "ckpt", conv_state_dict(torch.float16))
    assert invoke(db_url, "checkpoint", str(index), "--name", "good").exit_code == 0
    before = counts(db_url)
    corrupt(index, how)
    result = invoke(db_url, "checkpoint", str(index), "--name", "bad")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert BAD_SHARDS[how] in lines[0]
    assert counts(db_url) == before


@pytest.mark.parametrize(
    ("dtype", "shown"),
    [(torch.int8, "int8"), (torch.uint8, "uint8"), (torch.float8_e4m3fn, "float8_e4m3fn")],
)
def test_quantized_weights_are_refused_naming_the_dtype(db_url, tmp_path, dtype, shown):
    tensors = conv_state_dict(torch.float32)
    tensors["block.weight"] = tensors["block.weight"].clamp(-1, 1).mul(100).to(dtype)
    path = tmp_path / "quantized.safetensors"
    save_file(tensors, str(path))
    result = invoke(db_url, "checkpoint", str(path))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert f"weight block.weight is {shown}, a quantized or packed format" in result.output
    assert counts(db_url) == (0, 0, 0)
