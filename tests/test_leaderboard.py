"""RobustBench leaderboard files (SPEC section 6), checked against their raw JSON.

The expected values below are copied by hand from the files of the shared
``robustbench_model_info`` tree, so a parsing rule that drifts from SPEC section 6 fails.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from filterdb.errors import SourceError
from filterdb.ingest.sources.leaderboard import (
    parse_eps,
    read_entry,
    read_leaderboard,
    strip_html,
    training_type_of,
)
from filterdb.warehouse import schema
from filterdb.warehouse.database import engine_for

N_FILES = 236
# Files whose "dataset" field disagrees with their path (SPEC section 6), found by hand.
DATASET_MISMATCHES = {
    "cifar100/Linf/Hendrycks2019Using",
    "cifar100/corruptions/Gowal2020Uncovering_Linf",
    "cifar100/corruptions/Gowal2020Uncovering_extra_Linf",
    "cifar100/corruptions/Hendrycks2020AugMix_ResNeXt",
    "cifar100/corruptions/Hendrycks2020AugMix_WRN",
}


@pytest.fixture
def model_info(shared_data) -> Path:
    return shared_data / "robustbench_model_info"


def write_entry(root: Path, key: str, record: dict) -> None:
    path = root / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_every_file_parses_and_mismatches_trust_the_path(model_info):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = read_leaderboard(model_info)

    assert len(entries) == N_FILES == len(list(model_info.glob("*/*/*.json")))
    warned = {str(w.message).split(".json:")[0].split("robustbench_model_info/")[1] for w in caught}
    assert warned == DATASET_MISMATCHES
    by_key = {f"{e.dataset}/{e.threat_model}/{e.model_id}": e for e in entries}
    assert set(by_key) == {
        str(p.relative_to(model_info).with_suffix("")) for p in model_info.glob("*/*/*.json")
    }
    for key in DATASET_MISMATCHES:
        assert json.loads((model_info / f"{key}.json").read_text())["dataset"] == "cifar10"
        assert by_key[key].dataset == by_key[key].training.training_dataset == "cifar100"


def test_known_file_matches_its_raw_json(model_info):
    entry = read_entry(model_info, "cifar10", "Linf", "Carmon2019Unlabeled")

    assert entry.model_id == "Carmon2019Unlabeled"
    assert entry.architecture == "WideResNet-28-10"
    t = entry.training
    assert t.training_type == "adversarial"
    assert (t.training_dataset, t.threat_model) == ("cifar10", "Linf")
    assert t.clean_acc == 89.69
    # No "external" here: robust accuracy is AutoAttack's, never "reported" (62.5).
    assert t.robust_acc == t.autoattack_acc == 59.53
    assert t.external_acc is None
    assert (t.eps_text, t.eps) == ("8/255", 8 / 255)
    assert t.extra_data is True
    assert t.paper_title == "Unlabeled Data Improves Adversarial Robustness"
    assert t.paper_url == "https://arxiv.org/abs/1905.13736"
    assert t.venue == "NeurIPS 2019"
    assert t.unreliable is False
    assert t.number_forward_passes == 1
    assert t.footnote is None


def test_external_evaluation_comes_before_autoattack(model_info):
    t = read_entry(model_info, "cifar10", "Linf", "Xiao2020Enhancing").training

    assert (t.external_acc, t.autoattack_acc, t.robust_acc) == (7.40, 18.50, 7.40)
    assert (t.eps_text, t.eps) == ("0.031", 0.031)
    assert t.unreliable is True
    # The footnote holds <br> and an <a> link around LaTeX and a non-ASCII sign.
    assert t.footnote == (
        r"Uses \(\ell_{\infty} \) = 0.031 ≈ 7.9/255 instead of 8/255. 7.40% robust accuracy "
        "is due to 1 restart of APGD-CE and 30 restarts of Square Attack Note: this adaptive "
        "evaluation (Section 5) reports 0.16% robust accuracy on a different model "
        "(adversarially trained ResNet-18)."
    )


def test_html_is_stripped_from_venue(model_info):
    entry = read_entry(model_info, "cifar10", "Linf", "Engstrom2019Robustness")
    assert json.loads(Path(entry.location).read_text())["venue"] == "GitHub,<br>Oct 2019"
    assert entry.training.venue == "GitHub, Oct 2019"


def test_standard_corruptions_and_absent_fields(model_info):
    standard = read_entry(model_info, "cifar10", "L2", "Standard").training
    assert standard.training_type == "normal"
    assert standard.unreliable is None  # the file has no "unreliable" field
    assert (standard.eps_text, standard.eps) == ("0.5", 0.5)

    with pytest.warns(UserWarning, match="dataset='cifar10' disagrees with its path"):
        augmix = read_entry(model_info, "cifar100", "corruptions", "Hendrycks2020AugMix_WRN")
    assert augmix.dataset == augmix.training.training_dataset == "cifar100"
    assert (augmix.training.eps_text, augmix.training.eps) == (None, None)
    assert augmix.training.robust_acc is None  # no AutoAttack figure for corruptions
    assert augmix.training.corruptions_acc == 64.11
    assert augmix.training.clean_acc == 76.28


def test_corruptions_accuracy_is_the_raw_figure_for_corruptions_entries(model_info):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dataset mismatches, tested above
        entries = read_leaderboard(model_info)

    with_figure = [e for e in entries if e.training.corruptions_acc is not None]
    assert {e.threat_model for e in with_figure} == {"corruptions"}
    assert len(with_figure) == 48  # 23 cifar10, 13 cifar100, 12 imagenet: counted by hand
    for entry in entries:
        raw = json.loads(Path(entry.location).read_text()).get("corruptions_acc")
        assert entry.training.corruptions_acc == (None if raw is None else float(raw))


def test_corruptions_accuracy_reaches_v_models(db_url, model_info):
    entry = read_entry(model_info, "cifar10", "corruptions", "Hendrycks2020AugMix_ResNeXt")
    assert json.loads(Path(entry.location).read_text())["corruptions_acc"] == "89.09"

    with engine_for(db_url) as engine, engine.begin() as connection:
        model_id = connection.execute(
            sa.insert(schema.model)
            .values(
                name=entry.model_id,
                source="robustbench",
                checkpoint_sha256="0" * 64,
                max_conv_depth=0,
                ingested_at=datetime(2026, 1, 1),
            )
            .returning(schema.model.c.model_id)
        ).scalar_one()
        # What filterdb.warehouse.write and filterdb.ingest.zoo_selection insert: every
        # TrainingInfo field is a column.
        connection.execute(
            sa.insert(schema.training).values(model_id=model_id, **asdict(entry.training))
        )
        shown = connection.exec_driver_sql(
            "SELECT threat_model, corruptions_acc FROM v_models"
        ).one()
    assert tuple(shown) == ("corruptions", 89.09)


def test_unknown_values_are_none(tmp_path):
    write_entry(
        tmp_path,
        "cifar10/Linf/Made2024Up",
        {
            "name": "",
            "link": None,
            "venue": "A &amp; B<br/>2024",
            "footnote": "",
            "eps": "null",
            "clean_acc": "",
            "autoattack_acc": "null",
            "external": None,
            "reported": "99.0",
        },
    )
    entry = read_entry(tmp_path, "cifar10", "Linf", "Made2024Up")
    t = entry.training

    assert (t.clean_acc, t.autoattack_acc, t.external_acc, t.robust_acc) == (None,) * 4
    assert (t.eps_text, t.eps, t.paper_title, t.paper_url, t.footnote) == (None,) * 5
    assert (t.unreliable, t.extra_data, t.number_forward_passes) == (None,) * 3
    assert t.venue == "A & B 2024"


def test_bad_accuracy_names_file_and_field(tmp_path):
    write_entry(tmp_path, "cifar10/Linf/Bad", {"clean_acc": "about 90"})
    with pytest.raises(SourceError, match=r"Bad\.json: clean_acc='about 90' is not a percentage"):
        read_entry(tmp_path, "cifar10", "Linf", "Bad")


def test_invalid_json_is_a_source_error(tmp_path):
    (tmp_path / "cifar10" / "Linf").mkdir(parents=True)
    (tmp_path / "cifar10" / "Linf" / "Broken.json").write_text("{not json")
    with pytest.raises(SourceError, match="Broken.json is not valid JSON"):
        read_leaderboard(tmp_path)


def test_absent_entry_and_bad_locations(tmp_path):
    assert read_entry(tmp_path, "cifar10", "Linf", "Nobody") is None
    with pytest.raises(SourceError, match="no leaderboard directory"):
        read_leaderboard(tmp_path / "missing")
    with pytest.raises(SourceError, match="read_entry"):
        read_leaderboard("https://example.org/model_info")


@pytest.fixture
def served(model_info) -> Iterator[str]:
    """The shared model_info tree over HTTP on loopback."""

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(model_info)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_url_base_reads_the_same_entry(served, model_info):
    over_http = read_entry(served, "cifar10", "Linf", "Xiao2020Enhancing")
    local = read_entry(model_info, "cifar10", "Linf", "Xiao2020Enhancing")

    assert over_http.training == local.training
    assert over_http.location.startswith("http://127.0.0.1:")
    assert read_entry(served, "cifar10", "Linf", "Nobody") is None  # 404


def test_unreachable_url_is_one_line_error():
    # Port 9 (discard) on loopback: nothing listens there, the connection is refused at once.
    with pytest.raises(SourceError, match="cannot fetch http://127.0.0.1:9/") as caught:
        read_entry("http://127.0.0.1:9", "cifar10", "Linf", "Carmon2019Unlabeled")
    assert "\n" not in str(caught.value)


def test_training_type_rule():
    assert training_type_of("Standard") == training_type_of("Standard_R50") == "normal"
    assert training_type_of("Carmon2019Unlabeled") == "adversarial"


@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_fraction_eps_keeps_text_and_value(numerator, denominator):
    text = f"{numerator}/{denominator}"
    assert parse_eps(text) == (text, numerator / denominator)


@given(st.floats(0, 100, allow_nan=False).map(repr))
def test_decimal_eps_keeps_text_and_value(text):
    assert parse_eps(text) == (text, float(text))


@pytest.mark.parametrize("unknown", [None, "", "null"])
def test_unknown_eps(unknown):
    assert parse_eps(unknown) == (None, None)


def test_malformed_eps_is_refused():
    with pytest.raises(SourceError, match="8/255"):
        parse_eps("eight")


def test_strip_html_keeps_plain_text():
    assert strip_html("ICLR 2020") == "ICLR 2020"
    assert strip_html("<b>x</b>&lt;y") == "x<y"
    assert strip_html("<br>") is None
