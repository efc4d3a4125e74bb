"""Rough edges a first-time user hit (issue 15 section 4), each pinned by a test.

``--db`` after the subcommand; SQL from stdin and ``--file``; one Markdown writer; ONNX
files and out-of-memory named at ``ingest checkpoint``; key-order depth warned; terminal
tables that keep the key column whole; ``--version``, singular counts and flags shown as
flags; one ``n_parameters``; the producer string; ``--input-shape``; a checkpoint stored
under two names.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from oracles import assert_one_line_error
from safetensors.torch import save_file
from typer.testing import CliRunner

import filterdb
from filterdb.cli import output as cli_output
from filterdb.cli.main import app
from filterdb.errors import SourceError
from filterdb.ingest.sources import base
from filterdb.ingest.sources import robustbench as zoo
from filterdb.ingest.sources.checkpoint import checkpoint_candidate
from filterdb.ingest.sources.onnx_file import onnx_candidate
from filterdb.ingest.sources.torch_graph import trace_convs
from filterdb.ingest.sources.torchvision_hub import torchvision_candidate
from filterdb.warehouse.database import engine_for, read_frame
from filterdb.wording import counted

runner = CliRunner()
# Long names, as a user's models have them: at 100 columns the old table cut both.
LONG_NAMES = ("digits-normal-cnn-trained-for-ten-epochs", "digits-pgd-robust-cnn-ten-epochs")


def invoke(*args: object, stdin: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=stdin)


def rows(url: str, sql: str) -> list[tuple]:
    with engine_for(url) as engine, engine.connect() as connection:
        return read_frame(connection, sql).rows()


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """Three layers, two of them 3x3: random weights, nothing here depends on training."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"conv1.weight": (4, 3, 3, 3), "conv2.weight": (2, 4, 3, 3), "fc.weight": (3, 2)}
    state = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    torch.save(state, tmp_path / "toy.pt")
    return tmp_path / "toy.pt"


def ingest(url: str, path: Path, *options: object):
    return invoke("ingest", "checkpoint", path, "-q", "--device", "cpu", "--db", url, *options)


# --- --db after the subcommand --------------------------------------------------------------


def test_db_is_taken_before_and_after_the_subcommand(empty_db_url, checkpoint):
    assert invoke("init", "--db", empty_db_url).exit_code == 0
    stored = ingest(empty_db_url, checkpoint)  # --db after `ingest checkpoint`
    assert stored.exit_code == 0, stored.output
    for command in (
        ["models"],
        ["db", "current"],
        ["check"],
        ["layers", "toy"],
        ["query", "SELECT model_name, n_layers FROM v_models"],
    ):
        before = invoke("--db", empty_db_url, *command)
        after = invoke(*command, "--db", empty_db_url)
        assert before.exit_code == 0, before.output
        assert after.output == before.output, command
    assert "toy" in invoke("models", "--db", empty_db_url).output


def test_db_after_the_subcommand_wins_over_the_environment(duckdb_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FILTERDB_URL", f"duckdb:///{tmp_path / 'elsewhere.duckdb'}")
    assert invoke("db", "current", "--db", duckdb_url).output.strip().endswith("(head)")
    assert not (tmp_path / "elsewhere.duckdb").exists()


def test_db_given_twice_with_two_values_is_refused(duckdb_url, tmp_path):
    other = f"duckdb:///{tmp_path / 'other.duckdb'}"
    result = invoke("--db", other, "models", "--db", duckdb_url)
    assert result.exit_code == 2
    assert "given twice" in result.output
    assert invoke("--db", duckdb_url, "models", "--db", duckdb_url).exit_code == 0


def all_commands():
    import typer.main

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path, command

    return list(walk(typer.main.get_command(app), []))


def test_every_command_that_opens_the_database_takes_db():
    with_db = {" ".join(path) for path, command in all_commands() if "db" in _options(command)}
    without = {" ".join(path) for path, _ in all_commands()} - with_db
    # db history lists the package's revisions: it opens no database.
    assert without == {"db history"}


def _options(command) -> set[str]:
    return {p.name for p in command.params}


# --- --help, --version, counts ----------------------------------------------------------


def test_version_is_the_installed_one():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output == f"filterdb {importlib.metadata.version('filterdb')}\n"
    assert filterdb.__version__ in result.output


def test_help_shows_flags_as_flags_not_as_taking_a_value():
    for path, _ in [([], None), *all_commands()]:
        text = invoke(*path, "--help").output
        assert "<bool>" not in text, path
    metrics = invoke("metrics", "--help").output
    assert "--recompute / --no-recompute" in metrics
    assert "-q, --quiet  " in metrics
    assert "--write  " in invoke("query", "--help").output


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 layers"), (1, "1 layer"), (2, "2 layers"), (1234, "1,234 layers")],
)
def test_counts_take_the_singular_for_one(n, expected):
    assert counted(n, "layer") == expected


def test_ingest_and_check_say_1_layer_and_1_problem(duckdb_url, tmp_path):
    path = tmp_path / "one.pt"
    torch.save({"conv.weight": torch.randn(2, 1, 3, 3)}, path)
    result = ingest(duckdb_url, path)
    assert result.exit_code == 0, result.output
    assert "one: ingested, 1 layer, 2 filters" in result.output
    with engine_for(duckdb_url) as engine, engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM filter WHERE filter_index = 0")
    assert invoke("check", "--db", duckdb_url).output.splitlines()[-1] == "1 problem found"


# --- query: stdin, --file, parse errors, Markdown ----------------------------------------


def test_sql_that_starts_with_a_comment_comes_from_stdin_or_a_file(duckdb_url, tmp_path):
    sql = "-- how many models\nSELECT COUNT(*) AS n FROM v_models"
    from_stdin = invoke("query", "-", "--db", duckdb_url, "--format", "csv", stdin=sql)
    assert from_stdin.exit_code == 0, from_stdin.output
    assert from_stdin.output == "n\n0\n"
    (tmp_path / "q.sql").write_text(sql)
    from_file = invoke("query", "--file", tmp_path / "q.sql", "--db", duckdb_url, "--format", "csv")
    assert from_file.output == "n\n0\n"
    assert_one_line_error(invoke("query", "--db", duckdb_url), "--file")
    assert_one_line_error(
        invoke("query", "SELECT 1", "--file", tmp_path / "q.sql", "--db", duckdb_url), "not both"
    )
    assert_one_line_error(
        invoke("query", "--file", tmp_path / "absent.sql", "--db", duckdb_url), "absent.sql"
    )


def test_a_sql_typo_is_a_parse_error_through_the_cli(db_url):
    result = invoke("query", "SELEC * FROM v_models", "--db", db_url)
    assert_one_line_error(result, "does not parse", 'syntax error at or near "SELEC"')
    assert "--write" not in result.output


def test_query_markdown_escapes_pipes_in_cells(duckdb_url):
    sql = "SELECT 'a|b' AS x, 'plain' AS y"
    result = invoke("query", sql, "--db", duckdb_url, "--format", "markdown")
    assert result.exit_code == 0, result.output
    assert result.output == "| x | y |\n|---|---|\n| a\\|b | plain |\n"


# --- ingest checkpoint: ONNX, out of memory, --input-shape ---------------------------------


def export_onnx(path: Path) -> Path:
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 2, 3),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 6 * 6, 3),
    ).eval()
    torch.onnx.export(net, torch.randn(1, 3, 8, 8), path, dynamo=False, do_constant_folding=False)
    return path


def test_an_onnx_file_given_to_ingest_checkpoint_names_ingest_onnx(duckdb_url, tmp_path):
    path = export_onnx(tmp_path / "net.onnx")
    result = ingest(duckdb_url, path)
    assert_one_line_error(result, "is an ONNX file", f"use `filterdb ingest onnx {path}`")
    assert "corrupt" not in result.output
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(path.read_bytes()[:100])
    assert_one_line_error(ingest(duckdb_url, truncated), "corrupt or truncated")


def test_out_of_memory_is_not_called_corrupt(tmp_path):
    path = tmp_path / "fine.pt"
    torch.save({"w": torch.ones(3)}, path)
    allocator = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
        "you tried to allocate 4000000000 bytes."
    )
    for error in (MemoryError(), allocator):
        message = str(base.load_failure(path, error))
        assert "out of memory" in message and "corrupt" not in message
        assert len(message.splitlines()) == 1
    assert MemoryError in base.UNREADABLE_CHECKPOINT_ERRORS
    # Anything else (a bug, an unreadable disk) is not called unreadable: not caught here.
    assert not any(issubclass(OSError, e) for e in base.UNREADABLE_CHECKPOINT_ERRORS)
    assert Exception not in base.UNREADABLE_CHECKPOINT_ERRORS


def test_a_real_allocation_failure_reads_out_of_memory(tmp_path):
    """torch.load of a 16 MB legacy checkpoint under an address-space limit it cannot meet."""
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(4 * 2**20)}, path, _use_new_zipfile_serialization=False)
    script = f"""
import resource, sys
from pathlib import Path
import torch
from filterdb.errors import SourceError
from filterdb.ingest.sources.base import load_tensors
with open("/proc/self/status") as status:
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 4 * 2**20, resource.RLIM_INFINITY))
try:
    load_tensors(Path({str(path)!r}))
except SourceError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert "out of memory" in done.stdout, done.stdout + done.stderr
    assert "corrupt" not in done.stdout


class NeedsLargeInputs(torch.nn.Module):
    """fx cannot trace it (data-dependent branch); on 32x32 its Linear gets the wrong size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, stride=8)
        self.fc = torch.nn.Linear(2 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.fc(y.flatten(1))


def test_a_trace_error_names_the_input_shape_option_the_cli_takes(duckdb_url, checkpoint):
    with pytest.raises(SourceError) as failed:
        trace_convs(NeedsLargeInputs(), input_shape=(1, 3, 32, 32))
    assert "--input-shape C,H,W" in str(failed.value)
    traced = trace_convs(NeedsLargeInputs(), input_shape=(1, 3, 64, 64))
    assert traced.depth_method == "execution_order"
    assert "--input-shape" in invoke("ingest", "checkpoint", "--help").output
    for bad in ("3,32", "a,b,c", "3,0,32"):
        result = ingest(duckdb_url, checkpoint, "--input-shape", bad)
        assert_one_line_error(result, f"--input-shape {bad!r} is not C,H,W")


# --- key-order depth --------------------------------------------------------------------


def test_ingest_without_arch_warns_that_depth_is_key_order(duckdb_url, checkpoint, tmp_path):
    result = ingest(duckdb_url, checkpoint)
    assert result.exit_code == 0, result.output
    (warning,) = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert "state_dict key order" in warning and "--arch" in warning
    onnx = invoke("ingest", "onnx", export_onnx(tmp_path / "n.onnx"), "-q", "--db", duckdb_url)
    assert onnx.exit_code == 0 and "warning" not in onnx.output
    depth = rows(duckdb_url, "SELECT model_name, depth_method FROM v_models ORDER BY model_name")
    assert depth == [("n", "onnx"), ("toy", "key_order")]


# --- terminal tables ----------------------------------------------------------------------


def test_tables_keep_the_key_column_whole_at_100_columns(duckdb_url, checkpoint, monkeypatch):
    monkeypatch.setattr(cli_output.console, "width", 100)
    short = ingest(duckdb_url, checkpoint, "--name", "toy-cnn")
    assert short.exit_code == 0, short.output
    table = invoke("models", "--db", duckdb_url).output
    # Fits once the empty columns are left out: a table, every header whole, said so.
    assert "│ toy-cnn " in table and "…" not in table
    for column in ("model_name", "training_type", "n_layers", "n_filters"):
        assert f" {column} " in table
    caption = " ".join(line.strip() for line in table.splitlines() if "┃" not in line)
    assert "empty, not shown: architecture, canonical_architecture, training_dataset" in caption

    training = ("--training", "adversarial", "--threat-model", "Linf", "--eps", "8/255")
    metadata = ("--architecture", "SmallCNN-3x3-64", "--training-dataset", "digits", *training)
    for name in LONG_NAMES:
        options = ("--name", name, *metadata, "--clean-acc", "97.5", "--robust-acc", "51.25")
        assert ingest(duckdb_url, checkpoint, *options).exit_code == 0
    listed = invoke("models", "--db", duckdb_url)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert max(len(line) for line in lines) <= 100 and "…" not in listed.output
    # Too wide for a table: each model is a record, every value whole on its line.
    for name in LONG_NAMES:
        start = lines.index(f"model_name: {name}")
        record = [line.split() for line in lines[start + 1 : start + 11]]
        assert record[0] == ["architecture", "SmallCNN-3x3-64"]
        assert ["training_type", "adversarial"] in record
        assert ["eps", "0.03137"] in record
        assert ["robust_acc", "51.25"] in record
        assert ["n_filters", "20"] in record


# --- n_parameters and the producer ------------------------------------------------------


def float_values(module: torch.nn.Module) -> int:
    """Learnable parameters plus floating buffers, counted from the module (the oracle)."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in buffers)


def test_n_parameters_means_the_same_for_every_source(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 3)
    )
    torch.save(net.state_dict(), tmp_path / "net.pt")
    save_file(net.state_dict(), tmp_path / "net.safetensors")
    expected = float_values(net)
    assert expected > sum(p.numel() for p in net.parameters())  # the BN statistics count
    for path in (tmp_path / "net.pt", tmp_path / "net.safetensors"):
        assert checkpoint_candidate(path).read().info.n_parameters == expected, path

    onnx_path = export_onnx(tmp_path / "plain.onnx")  # no BatchNorm for the exporter to fold
    torch.manual_seed(1)
    plain = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 2, 3),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 6 * 6, 3),
    )
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    from_onnx = onnx_candidate(onnx_path).read().info.n_parameters
    from_torch = checkpoint_candidate(tmp_path / "plain.pt").read().info.n_parameters
    assert from_onnx == from_torch == float_values(plain)

    # torchvision: its metadata's num_params leaves out the BatchNorm statistics.
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    (home / "hub" / "checkpoints").mkdir(parents=True)
    model = torchvision.models.mobilenet_v3_small()
    torch.save(model.state_dict(), home / "hub" / "checkpoints" / "mobilenet.pth")
    real = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    entry = torchvision.models.Weights(
        url="https://download.pytorch.org/models/mobilenet.pth",
        transforms=real.transforms,
        meta=real.meta,
    )
    candidate = torchvision_candidate("mobilenet_v3_small", weights=entry, name="tv")
    assert candidate.read().info.n_parameters == float_values(model)


def test_robustbench_counts_like_a_checkpoint_and_names_the_installed_version(tmp_path):
    dataset, threat, name = "cifar10", "Linf", "Sehwag2021Proxy_R18"
    torch.manual_seed(3)
    model = zoo.build_zoo_architecture(name, dataset=dataset, threat_model=threat)
    path = tmp_path / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict()}, path)
    candidate = zoo.zoo_candidate(name, dataset=dataset, threat_model=threat, model_dir=tmp_path)
    info = candidate.read().info
    assert info.n_parameters == float_values(model)
    assert info.n_parameters == checkpoint_candidate(path).read().info.n_parameters
    assert info.producer == f"robustbench {importlib.metadata.version('robustbench')}"


# --- one checkpoint under two names -------------------------------------------------------


def test_a_checkpoint_stored_under_two_names_is_warned_and_checked(db_url, checkpoint):
    assert "warning: the same" not in ingest(db_url, checkpoint, "--name", "a").output
    second = ingest(db_url, checkpoint, "--name", "b")
    assert second.exit_code == 0, second.output
    assert "warning: the same checkpoint (sha256 " in second.output
    assert "is already stored as a; comparisons will count" in second.output
    again = ingest(db_url, checkpoint, "--name", "b")  # skipped: nothing new stored
    assert "skipped" in again.output and "warning: the same" not in again.output
    (sha256,) = {s for (s,) in rows(db_url, "SELECT checkpoint_sha256 FROM v_models")}

    checked = invoke("check", "--db", db_url)
    assert checked.exit_code == 0  # a warning, not a broken rule
    assert checked.output.splitlines() == [
        f"warning: models a, b are stored from the same checkpoint (sha256 {sha256[:12]}, "
        "weights form raw); keep one name unless each is meant",
        "consistent: every rule holds (1 warning)",
    ]
    assert filterdb.FilterDB(db_url).check() == []
    assert len(filterdb.FilterDB(db_url).check_report().warnings) == 1


def test_a_bug_reaches_the_user_as_one_line_and_its_traceback_on_request(
    duckdb_url, monkeypatch, capsys
):
    from filterdb.cli import main as cli_main
    from filterdb.warehouse import inventory

    def broken(**kwargs):
        raise TypeError("unsupported operand\nsecond line")

    monkeypatch.setattr(inventory, "models", broken)
    monkeypatch.setattr(sys, "argv", ["filterdb", "--db", duckdb_url, "models"])
    monkeypatch.delenv(cli_main.DEBUG_ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert error.strip().splitlines() == [
        "error: internal error (TypeError: unsupported operand); this is a bug in filterdb: "
        "rerun with FILTERDB_DEBUG=1 for the traceback and report it"
    ]
    monkeypatch.setenv(cli_main.DEBUG_ENVIRONMENT_VARIABLE, "1")
    with pytest.raises(TypeError, match="unsupported operand"):
        cli_main.main()
