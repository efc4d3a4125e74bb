"""Ingestion of torch checkpoints: exact rows, incremental, atomic, and bad input refused."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from filterdb.cli.main import app
from filterdb.errors import ModelConflict, SourceError
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.warehouse import check, inventory, write
from filterdb.warehouse.database import engine_for, read_frame
from filterdb.warehouse.records import TrainingInfo

runner = CliRunner()


class TinyNet(torch.nn.Module):
    """3x3 convs (one grouped), a 1x1 shortcut, a depthwise 3x3 and a linear head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 3, padding=1)
        self.grouped = torch.nn.Conv2d(width, width, 3, padding=1, groups=2)
        self.shortcut = torch.nn.Conv2d(width, width, 1)
        self.depthwise = torch.nn.Conv2d(width, width, 3, padding=1, groups=width, stride=2)
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.grouped(x)) + self.shortcut(x)
        x = self.depthwise(x)
        return self.head(x.mean(dim=(2, 3)))


def save(state_dict: dict, path: Path) -> Path:
    torch.save(state_dict, path)
    return path


def conv_weights(state_dict: dict) -> dict[str, np.ndarray]:
    """The 3x3 weights of a state_dict as (n, 9) float32 arrays: the oracle for rows."""
    return {
        key.removesuffix(".weight"): t.detach().contiguous().reshape(-1, 9).numpy()
        for key, t in state_dict.items()
        if t.dim() == 4 and t.shape[-2:] == (3, 3)
    }


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


def table_counts(url: str) -> dict[str, int]:
    with engine_for(url) as engine, engine.connect() as connection:
        return {
            table: connection.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one()
            for table in ("model", "training", "layer", "filter", "metric_cache")
        }


def ingest_log(url: str) -> list[tuple[str, str]]:
    with engine_for(url) as engine, engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.exec_driver_sql(
                "SELECT model_name, status FROM ingest_log ORDER BY ingest_id"
            )
        ]


@pytest.fixture
def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TinyNet().state_dict()


def test_state_dict_rows_equal_the_checkpoint_bitwise(db_url, tmp_path, tiny_state_dict):
    # Nested under "state_dict", DataParallel prefixes, a non-contiguous tensor.
    nested = {f"module.{k}": v for k, v in tiny_state_dict.items()}
    nested["module.stem.weight"] = tiny_state_dict["stem.weight"].transpose(2, 3)
    path = save({"state_dict": nested}, tmp_path / "tiny.pt")
    result = ingest(checkpoint_candidate(path), url=db_url, device="cpu")

    expected = conv_weights({k.removeprefix("module."): v for k, v in nested.items()})
    assert result.status == "ingested"
    assert (result.n_layers, result.n_filters) == (3, sum(len(v) for v in expected.values()))
    got = stored_filters(db_url, "tiny")
    assert list(got) == list(expected)
    for name, filters in expected.items():
        assert got[name].dtype == np.float32
        assert got[name].tobytes() == filters.tobytes(), name
    with engine_for(db_url) as engine, engine.connect() as connection:
        stored_sha256 = connection.exec_driver_sql("SELECT checkpoint_sha256 FROM model").scalar()
    assert stored_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert check.check(url=db_url) == []


def test_layers_carry_shape_and_key_order_depth(db_url, tmp_path, tiny_state_dict):
    path = save(tiny_state_dict, tmp_path / "tiny.pt")
    ingest(checkpoint_candidate(path), url=db_url, device="cpu")
    with engine_for(db_url) as engine, engine.connect() as connection:
        layers = read_frame(
            connection,
            "SELECT layer_name, conv_index, conv_depth, conv_depth_norm, depth_bin, "
            "depth_method, n_filters, out_channels FROM v_layers ORDER BY conv_index",
        )
    # Without architecture every 4-D weight is a conv in key order, the 1x1 included.
    assert layers["layer_name"].to_list() == ["stem", "grouped", "depthwise"]
    assert layers["conv_index"].to_list() == [0, 1, 2]
    assert layers["conv_depth"].to_list() == [0, 1, 3]
    assert layers["conv_depth_norm"].to_list() == pytest.approx([0, 1 / 3, 1])
    assert layers["depth_bin"].to_list() == ["first", "(0.3, 0.4]", "(0.9, 1.0]"]
    assert set(layers["depth_method"]) == {"key_order"}
    assert layers["n_filters"].to_list() == [8 * 3, 8 * 4, 8 * 1]


def test_architecture_gives_graph_depth_and_groups(db_url, tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small()
    path = save(model.state_dict(), tmp_path / "mobile.pt")
    result = ingest(
        checkpoint_candidate(
            path,
            arch="torchvision:mobilenet_v3_small",
            input_shape=(1, 3, 64, 64),
        ),
        url=db_url,
        device="cpu",
    )
    assert result.n_layers > 0
    with engine_for(db_url) as engine, engine.connect() as connection:
        layers = read_frame(connection, "SELECT * FROM v_layers ORDER BY conv_index")
    assert set(layers["depth_method"]) == {"graph"}
    depthwise = layers.filter(layers["groups"] > 1)
    assert depthwise.height > 0
    assert (depthwise["groups"] == depthwise["in_channels"]).all()
    assert (depthwise["n_filters"] == depthwise["out_channels"]).all()
    assert layers["conv_depth"].is_sorted()
    assert check.check(url=db_url) == []


def test_unchanged_checkpoint_is_skipped(db_url, tmp_path, tiny_state_dict):
    path = save(tiny_state_dict, tmp_path / "tiny.pt")
    first = ingest(checkpoint_candidate(path), url=db_url)
    counts = table_counts(db_url)
    second = ingest(checkpoint_candidate(path), url=db_url)
    assert second.status == "skipped"
    assert (second.model_id, second.n_filters) == (first.model_id, first.n_filters)
    assert table_counts(db_url) == counts
    assert ingest_log(db_url) == [("tiny", "ingested"), ("tiny", "skipped")]


def test_changed_checkpoint_is_refused_then_replaced_with_force(db_url, tmp_path, tiny_state_dict):
    path = save(tiny_state_dict, tmp_path / "tiny.pt")
    ingest(checkpoint_candidate(path), url=db_url)
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in tiny_state_dict.items()}
    save(changed, path)
    before = stored_filters(db_url, "tiny")
    with pytest.raises(ModelConflict, match="--force"):
        ingest(checkpoint_candidate(path), url=db_url)
    assert all(np.array_equal(before[k], v) for k, v in stored_filters(db_url, "tiny").items())

    result = ingest(checkpoint_candidate(path), url=db_url, force=True)
    assert result.status == "replaced"
    got = stored_filters(db_url, "tiny")
    for name, filters in conv_weights(changed).items():
        assert got[name].tobytes() == filters.tobytes()
    assert table_counts(db_url)["model"] == 1
    assert check.check(url=db_url) == []
    assert [status for _, status in ingest_log(db_url)] == ["ingested", "failed", "replaced"]


def test_training_metadata_lands_in_v_models(db_url, tmp_path, tiny_state_dict):
    path = save(tiny_state_dict, tmp_path / "tiny.pt")
    training = TrainingInfo(
        training_type="adversarial",
        training_dataset="cifar10",
        threat_model="Linf",
        eps_text="8/255",
        eps=8 / 255,
        clean_acc=81.5,
        robust_acc=50.25,
    )
    ingest(checkpoint_candidate(path, name="robust-tiny", training=training), url=db_url)
    with engine_for(db_url) as engine, engine.connect() as connection:
        row = read_frame(connection, "SELECT * FROM v_models").row(0, named=True)
    assert row["model_name"] == "robust-tiny"
    assert row["robust"] is True
    assert (row["training_dataset"], row["threat_model"], row["eps_text"]) == (
        "cifar10",
        "Linf",
        "8/255",
    )
    assert row["eps"] == pytest.approx(8 / 255)
    assert (row["clean_acc"], row["robust_acc"]) == (81.5, 50.25)
    assert (row["n_layers"], row["n_filters"]) == (3, 64)


class RunsCode:
    """An object whose unpickling would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def bad_checkpoints(tmp_path: Path, state_dict: dict) -> dict[str, tuple[Path, str]]:
    good = save(state_dict, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(random.Random(0).randbytes(4096))
    html = tmp_path / "html.pt"
    html.write_text("<!DOCTYPE html><html><body>Google Drive quota exceeded</body></html>")
    pickle_code = save({"weights": RunsCode(tmp_path / "marker")}, tmp_path / "code.pt")
    no_3x3 = save(
        {"fc.weight": torch.ones(4, 4), "pw.weight": torch.ones(4, 4, 1, 1)}, tmp_path / "no3x3.pt"
    )
    nan = {k: v.clone() for k, v in state_dict.items()}
    nan["grouped.weight"][0, 0, 1, 1] = float("nan")
    nonfinite = save(nan, tmp_path / "nan.pt")
    inf = {k: v.clone() for k, v in state_dict.items()}
    inf["depthwise.weight"][-1, 0, 2, 2] = -float("inf")
    infinite = save(inf, tmp_path / "inf.pt")
    return {
        "truncated": (truncated, "corrupt or truncated"),
        "garbage": (garbage, "corrupt or truncated"),
        "html": (html, "HTML page"),
        "pickle_code": (pickle_code, "weights_only"),
        "no_3x3": (no_3x3, "no 3x3 convolution"),
        "nonfinite": (nonfinite, "--allow-nonfinite"),
        "infinite": (infinite, "--allow-nonfinite"),
    }


@pytest.mark.parametrize(
    "case", ["truncated", "garbage", "html", "pickle_code", "no_3x3", "nonfinite", "infinite"]
)
def test_bad_input_is_one_line_and_leaves_the_database_unchanged(
    db_url, tmp_path, tiny_state_dict, case
):
    existing = save(tiny_state_dict, tmp_path / "existing.pt")
    ingest(checkpoint_candidate(existing), url=db_url)
    counts = table_counts(db_url)
    path, fragment = bad_checkpoints(tmp_path, tiny_state_dict)[case]

    result = runner.invoke(app, ["--db", db_url, "ingest", "checkpoint", str(path), "--quiet"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert table_counts(db_url) == counts
    assert not (tmp_path / "marker").exists()
    assert ingest_log(db_url)[-1] == (path.stem, "failed")
    assert check.check(url=db_url) == []


def test_locked_duckdb_file_refuses_ingest_in_one_line(
    duckdb_url, tmp_path, tiny_state_dict, duckdb_lock_holder
):
    path = save(tiny_state_dict, tmp_path / "tiny.pt")
    holder = duckdb_lock_holder(duckdb_url)
    result = runner.invoke(app, ["--db", duckdb_url, "ingest", "checkpoint", str(path), "-q"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"locked by process {holder.pid}" in lines[0]
    holder.kill()
    holder.wait()
    assert table_counts(duckdb_url)["model"] == 0


def test_nonfinite_weights_are_stored_when_allowed(db_url, tmp_path, tiny_state_dict):
    path, _ = bad_checkpoints(tmp_path, tiny_state_dict)["nonfinite"]
    result = runner.invoke(
        app, ["--db", db_url, "ingest", "checkpoint", str(path), "--allow-nonfinite", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert np.isnan(stored_filters(db_url, "nan")["grouped"][0, 4])


def test_cli_ingest_prints_a_summary_and_models_lists_it(db_url, tmp_path, tiny_state_dict):
    path = save(tiny_state_dict, tmp_path / "tiny.pt")
    args = [
        "--db",
        db_url,
        "ingest",
        "checkpoint",
        str(path),
        "--training",
        "adversarial",
        "--eps",
        "8/255",
        "--training-dataset",
        "cifar10",
        "-q",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tiny: ingested, 3 layers, 64 filters" in result.output
    assert "tiny: skipped" in runner.invoke(app, args).output
    listing = runner.invoke(app, ["--db", db_url, "models"])
    assert "tiny" in listing.output and "cifar10" in listing.output


def test_check_fails_on_a_database_damaged_by_hand(db_url, tmp_path, tiny_state_dict):
    ingest(checkpoint_candidate(save(tiny_state_dict, tmp_path / "tiny.pt")), url=db_url)
    assert runner.invoke(app, ["--db", db_url, "check"]).exit_code == 0
    with engine_for(db_url) as engine, engine.begin() as connection:
        connection.exec_driver_sql(
            "DELETE FROM filter WHERE filter_index = 0 AND layer_id = "
            "(SELECT MIN(layer_id) FROM layer)"
        )
        connection.exec_driver_sql(
            "INSERT INTO layer (model_id, name, conv_index, graph_depth, conv_depth, "
            "conv_depth_norm, depth_method, in_channels, out_channels, groups, n_filters) "
            "VALUES (999, 'orphan', 0, 0, 0, 0, 'key_order', 1, 1, 1, 1)"
        )
        connection.exec_driver_sql(
            "UPDATE filter SET out_channel = 99 WHERE filter_index = 1 AND layer_id = "
            "(SELECT MAX(layer_id) FROM layer WHERE name = 'grouped')"
        )
        connection.exec_driver_sql("UPDATE layer SET conv_depth = 7 WHERE name = 'depthwise'")
    result = runner.invoke(app, ["--db", db_url, "check"])
    assert result.exit_code == 1
    assert "layer stem of tiny expects 24 filters, found 23" in result.output
    assert "points at missing model_id 999" in result.output
    assert "1 filter rows of layer grouped of tiny have an index or channel" in result.output
    assert "layer depthwise of tiny has conv_depth 7 outside 0..3" in result.output


KILLED_INGEST = """
import sys
from pathlib import Path
from filterdb.ingest.pipeline import ingest
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.warehouse import write

url, path, batch_filters, stop_at, force = sys.argv[1:]
write.BATCH_FILTERS = int(batch_filters)  # several committed batches for a small model
events = 0


def progress(event):
    global events
    print(event.phase, flush=True)
    if events == int(stop_at):
        sys.stdin.readline()  # held at this event until the parent's SIGKILL
    events += 1


ingest(
    checkpoint_candidate(Path(path), name="big"),
    url=url,
    device="cpu",
    force=force == "force",
    on_progress=progress,
)
print("finished", flush=True)
"""

# Small enough for a quick test, in 4 committed batches of 16,384 filters.
KILL_BATCH_FILTERS = 16_384
# Progress events of one ingest: hashing, reading, extracting, writing (before any row),
# writing after each of the 4 committed batches, publishing, done.
EVENTS = ("hashing", "reading", "extracting", "writing", *["writing"] * 4, "publishing", "done")


def run_and_kill(url: str, path: Path, *, stop_at: int, force: bool = False) -> bool:
    """Run an ingest of ``path`` as ``big`` in a child process, SIGKILL it at progress event
    ``stop_at`` (while it waits there; -1: as soon as the first batch is committed, while
    it writes on); True when it died before finishing."""
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    arguments = [url, str(path), str(KILL_BATCH_FILTERS), str(stop_at), "force" if force else ""]
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_INGEST, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    wanted = stop_at if stop_at >= 0 else EVENTS.index("writing") + 1
    for index, line in enumerate(child.stdout):
        assert line.strip() == EVENTS[index]
        if index == wanted:
            break
    child.send_signal(signal.SIGKILL)
    rest = child.stdout.read()
    child.wait()
    return "finished" not in rest


def visible_models(url: str, *, inventory_too: bool = True) -> dict[str, bytes]:
    """What readers see, per model: its filters' bytes; asserts the readers agree."""
    with engine_for(url) as engine, engine.connect() as connection:
        models = read_frame(connection, "SELECT model_name, n_layers, n_filters FROM v_models")
        layers = read_frame(
            connection, "SELECT model_name, SUM(n_filters) AS n FROM v_layers GROUP BY model_name"
        )
        metric_layers = read_frame(
            connection, "SELECT model_name, COUNT(*) AS n FROM v_layer_metrics GROUP BY model_name"
        )
    if inventory_too:  # `filterdb models`; it checks the revision first (slow on DuckDB)
        assert sorted(inventory.models(url=url)["model_name"]) == sorted(models["model_name"])
    seen = {}
    for name, n_layers, n_filters in models.iter_rows():
        filters = stored_filters(url, name)
        assert sum(len(v) for v in filters.values()) == n_filters
        assert dict(layers.iter_rows())[name] == n_filters
        assert dict(metric_layers.iter_rows())[name] == n_layers == len(filters)
        seen[name] = b"".join(v.tobytes() for v in filters.values())
    return seen


def leftovers(url: str) -> list[str]:
    return [line for line in check.check(url=url) if "half-loaded" in line]


def test_kill_9_at_every_phase_of_a_batched_ingest(db_url, tmp_path):
    torch.manual_seed(1)
    old = {f"conv{i}.weight": torch.randn(64, 64, 3, 3) for i in range(16)}  # 65,536 filters
    new = {key: -2 * tensor for key, tensor in old.items()}
    old_path, new_path = save(old, tmp_path / "old.pt"), save(new, tmp_path / "new.pt")
    old_bytes = b"".join(v.tobytes() for v in conv_weights(old).values())
    new_bytes = b"".join(v.tobytes() for v in conv_weights(new).values())
    first_batch = EVENTS.index("writing") + 1

    # A fresh ingest killed after its first committed batch: readers see no model; what it
    # wrote is one leftover. Each child imports torch (a few seconds): the other phases
    # are checked in-process by the test below, the other kills come next.
    assert run_and_kill(db_url, old_path, stop_at=first_batch)
    assert visible_models(db_url) == {}
    left = leftovers(db_url)
    assert len(left) == 1 and f"{KILL_BATCH_FILTERS:,} of 65,536 filters written" in left[0]
    # The rerun converges to the uninterrupted result and says what it removed.
    result = ingest(checkpoint_candidate(old_path, name="big"), url=db_url, device="cpu")
    assert result.status == "ingested"
    assert any("interrupted ingest left" in note for note in result.notes)
    assert visible_models(db_url) == {"big": old_bytes}
    assert check.check(url=db_url) == []

    # A --force replacement killed somewhere in its later batches (inside a transaction,
    # most likely): readers still see the old model, whole.
    assert run_and_kill(db_url, new_path, stop_at=-1, force=True)
    assert visible_models(db_url) == {"big": old_bytes}
    # `check` names the leftover and --repair removes it; readers never saw it.
    result = runner.invoke(app, ["--db", db_url, "check"])
    assert result.exit_code == 1 and "model big" in result.output
    assert "half-loaded" in result.output and "--repair" in result.output
    repaired = runner.invoke(app, ["--db", db_url, "check", "--repair"])
    assert repaired.exit_code == 0, repaired.output
    assert "removed: model big" in repaired.output
    assert "consistent" in repaired.output
    assert table_counts(db_url)["filter"] == 65_536
    assert visible_models(db_url) == {"big": old_bytes}

    # Killed once published (at "done"): the new model is there, whole; the old one gone.
    run_and_kill(db_url, new_path, stop_at=EVENTS.index("done"), force=True)
    assert visible_models(db_url) == {"big": new_bytes}
    assert check.check(url=db_url) == []
    assert table_counts(db_url)["filter"] == 65_536


def test_readers_see_no_part_of_a_model_while_it_loads(db_url, tmp_path, monkeypatch):
    # In one process, at every progress event: a fresh ingest, then a --force replacement.
    # 64 filters in 3 committed batches (a batch ends at a layer: 24, 32, 8 filters)
    monkeypatch.setattr(write, "BATCH_FILTERS", 16)
    torch.manual_seed(2)
    first = TinyNet().state_dict()
    second = {key: tensor + 1 for key, tensor in first.items()}
    expected = [b"".join(v.tobytes() for v in conv_weights(sd).values()) for sd in (first, second)]
    for state_dict, before, after in ((first, {}, 0), (second, {"tiny": expected[0]}, 1)):
        seen = []

        def look(event, before=before, seen=seen):
            seen.append(event.phase)
            if event.phase not in ("done", "failed"):
                assert visible_models(db_url, inventory_too=False) == before, event

        path = save(state_dict, tmp_path / f"tiny{after}.pt")
        candidate = checkpoint_candidate(path, name="tiny")
        ingest(candidate, url=db_url, device="cpu", force=True, on_progress=look)
        assert seen.count("writing") == 1 + 3 and "publishing" in seen
        assert visible_models(db_url) == {"tiny": expected[after]}
        assert check.check(url=db_url) == []


def test_missing_checkpoint_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="no checkpoint at"):
        checkpoint_candidate(tmp_path / "absent.pt")


def test_a_model_stored_meanwhile_is_not_replaced_without_force(db_url, tmp_path, tiny_state_dict):
    # Another process stores the name while this one is reading its checkpoint.
    mine = save(tiny_state_dict, tmp_path / "mine.pt")
    theirs = save({k: v * 3 for k, v in tiny_state_dict.items()}, tmp_path / "theirs.pt")
    candidate = checkpoint_candidate(mine, name="shared")
    read_mine = candidate.read

    def read_while_another_process_writes():
        ingest(checkpoint_candidate(theirs, name="shared"), url=db_url)
        return read_mine()

    candidate.read = read_while_another_process_writes
    with pytest.raises(ModelConflict, match="--force"):
        ingest(candidate, url=db_url)
    got = stored_filters(db_url, "shared")
    assert got["stem"].tobytes() == conv_weights(torch.load(theirs))["stem"].tobytes()
    assert check.check(url=db_url) == []


def test_the_same_bytes_stored_meanwhile_are_skipped(db_url, tmp_path, tiny_state_dict):
    path = save(tiny_state_dict, tmp_path / "tiny.pt")
    candidate = checkpoint_candidate(path)
    read = candidate.read

    def read_while_another_process_writes():
        ingest(checkpoint_candidate(path), url=db_url)
        return read()

    candidate.read = read_while_another_process_writes
    assert ingest(candidate, url=db_url).status == "skipped"
    assert table_counts(db_url)["model"] == 1


@pytest.mark.parametrize("option", [["--threat-model", "Linf"], ["--eps", "8/255"]])
def test_a_normal_model_takes_no_threat_model_or_eps(db_url, tmp_path, tiny_state_dict, option):
    path = save(tiny_state_dict, tmp_path / "tiny.pt")
    args = ["--db", db_url, "ingest", "checkpoint", str(path), "--training", "normal", "-q"]
    result = runner.invoke(app, [*args, *option])
    assert result.exit_code == 1
    assert "error: a normally trained model has no threat model or attack budget, but " in (
        " ".join(result.output.split())
    )
    assert f"{option[0]} was given" in " ".join(result.output.split())
    with engine_for(db_url) as engine, engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM model").scalar_one() == 0


def test_fold_batchnorm_without_arch_is_refused_on_the_cli(db_url, tmp_path, tiny_state_dict):
    path = save(tiny_state_dict, tmp_path / "tiny.pt")
    result = runner.invoke(
        app, ["--db", db_url, "ingest", "checkpoint", str(path), "--fold-batchnorm", "-q"]
    )
    assert result.exit_code == 1
    assert "--fold-batchnorm needs the architecture" in " ".join(result.output.split())
