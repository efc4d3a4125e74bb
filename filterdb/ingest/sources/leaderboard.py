"""RobustBench leaderboard files: ``model_info/<dataset>/<threat_model>/<model_id>.json``.

The leaderboard figures (clean and robust accuracy, architecture, eps, extra data, venue)
are not in the robustbench wheel (PLATFORM.md): they are read here from a local copy of the
``model_info`` tree or from a URL base such as
``https://raw.githubusercontent.com/RobustBench/robustbench/master/model_info``.
The rules for their fields are in SPEC section 6. No robustbench import is needed.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from fractions import Fraction
from html.parser import HTMLParser
from pathlib import Path

from filterdb.errors import MetadataError, SourceError
from filterdb.warehouse.records import TrainingInfo

URL_SCHEMES = ("http", "https")
# The leaderboard writes unknown figures in three ways (SPEC section 6).
UNKNOWN_VALUES = (None, "", "null")
URL_TIMEOUT_S = 30


@dataclass
class LeaderboardEntry:
    """One leaderboard file, read with the rules of SPEC section 6.

    ``model_id`` is the file stem and ``dataset`` / ``threat_model`` come from the file's
    path, whatever its ``dataset`` field says. ``training`` holds everything that goes to
    the ``training`` table. ``location`` is the file or URL it was read from.
    """

    model_id: str
    dataset: str
    threat_model: str
    architecture: str | None
    training: TrainingInfo
    location: str


def training_type_of(model_id: str) -> str:
    """``"normal"`` for RobustBench's ``Standard`` entries, else ``"adversarial"`` (SPEC 6)."""
    return "normal" if model_id.startswith("Standard") else "adversarial"


def read_leaderboard(location: str | Path) -> list[LeaderboardEntry]:
    """Read every ``<dataset>/<threat_model>/<model_id>.json`` under a local directory.

    Entries come sorted by path. A URL base cannot be listed over HTTP: read its entries
    one by one with :func:`read_entry`. Raises :class:`SourceError` when ``location`` is a
    URL or not a directory, or when a file is not valid leaderboard JSON.
    """
    if _is_url(location):
        raise SourceError(
            f"cannot list the leaderboard at {location}: a URL has no directory listing; "
            "read entries one by one with read_entry, or pass a local model_info directory"
        )
    root = Path(location)
    if not root.is_dir():
        raise SourceError(f"no leaderboard directory at {root}; pass a local model_info copy")
    return [
        _entry_from_json(
            _parse_json(path.read_bytes(), str(path)),
            dataset=path.parent.parent.name,
            threat_model=path.parent.name,
            model_id=path.stem,
            location=str(path),
        )
        for path in sorted(root.glob("*/*/*.json"))
    ]


def read_entry(
    location: str | Path, dataset: str, threat_model: str, name: str
) -> LeaderboardEntry | None:
    """Read the leaderboard file of one model from a local directory or a URL base.

    Returns None when there is no such file (a local file is absent, or the server answers
    404). Raises :class:`SourceError` when the URL cannot be fetched or the file is not
    valid leaderboard JSON.
    """
    relative = f"{dataset}/{threat_model}/{name}.json"
    if _is_url(location):
        url = f"{str(location).rstrip('/')}/{urllib.parse.quote(relative)}"
        raw = _fetch(url)
        where = url
    else:
        path = Path(location) / relative
        raw = path.read_bytes() if path.is_file() else None
        where = str(path)
    if raw is None:
        return None
    return _entry_from_json(
        _parse_json(raw, where),
        dataset=dataset,
        threat_model=threat_model,
        model_id=name,
        location=where,
    )


def parse_eps(text: str | None) -> tuple[str | None, float | None]:
    """``(text, value)`` of an attack budget written as a fraction or a decimal.

    ``"8/255"`` gives ``("8/255", 8/255)``, ``"0.031"`` gives ``("0.031", 0.031)``; an
    unknown budget (None, ``""``, ``"null"``) gives ``(None, None)``. Raises
    :class:`SourceError` for anything else.
    """
    if text in UNKNOWN_VALUES:
        return None, None
    text = str(text).strip()
    try:
        return text, float(Fraction(text))
    except OverflowError:
        raise MetadataError(
            f"eps {text} is not a finite positive attack budget; write it like 8/255 or 0.5"
        ) from None
    except (ValueError, ZeroDivisionError):
        raise SourceError(
            f"eps {text!r} is neither a fraction nor a decimal; write it like 8/255 or 0.031"
        ) from None


def strip_html(text: str | None) -> str | None:
    """``text`` without HTML tags, entities decoded, whitespace collapsed; None if empty.

    A ``<br>`` becomes a space, so ``"GitHub,<br>Oct 2019"`` reads ``"GitHub, Oct 2019"``.
    """
    if text is None:
        return None
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    stripped = re.sub(r"\s+", " ", "".join(parser.parts)).strip()
    return stripped or None


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment; entities are decoded by HTMLParser itself."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)


def _entry_from_json(
    record: dict, *, dataset: str, threat_model: str, model_id: str, location: str
) -> LeaderboardEntry:
    # The path is the truth: 5 files of the real tree carry another dataset (SPEC section 6).
    if record.get("dataset") not in (None, dataset):
        warnings.warn(
            f"{location}: field dataset={record['dataset']!r} disagrees with its path; "
            f"using {dataset!r} from the path",
            stacklevel=2,
        )
    autoattack_acc = _accuracy(record, "autoattack_acc", location)
    external_acc = _accuracy(record, "external", location)
    eps_text, eps = _eps(record, location)
    try:
        training = TrainingInfo(
            training_type=training_type_of(model_id),
            training_dataset=dataset,
            threat_model=threat_model,
            eps_text=eps_text,
            eps=eps,
            extra_data=record.get("additional_data"),
            clean_acc=_accuracy(record, "clean_acc", location),
            # A stronger outside evaluation replaces AutoAttack on the leaderboard; the paper's
            # own claim ("reported") is never a robust accuracy (SPEC section 6).
            robust_acc=external_acc if external_acc is not None else autoattack_acc,
            autoattack_acc=autoattack_acc,
            external_acc=external_acc,
            # Corruptions entries' own figure: not a robust accuracy (SPEC section 6), a column
            # of its own.
            corruptions_acc=_accuracy(record, "corruptions_acc", location),
            paper_title=_text(record.get("name")),
            paper_url=_text(record.get("link")),
            venue=strip_html(record.get("venue")),
            footnote=strip_html(record.get("footnote")),
            unreliable=record.get("unreliable"),
            number_forward_passes=record.get("number_forward_passes"),
        )
    except MetadataError as error:  # a figure out of range (TrainingInfo.validate)
        raise MetadataError(f"{location}: {error}") from None
    return LeaderboardEntry(
        model_id=model_id,
        dataset=dataset,
        threat_model=threat_model,
        architecture=_text(record.get("architecture")),
        training=training,
        location=location,
    )


def _accuracy(record: dict, field: str, location: str) -> float | None:
    """A percent figure ("89.69") as a float; None when unknown or absent."""
    value = record.get(field)
    if value in UNKNOWN_VALUES:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SourceError(
            f"{location}: {field}={value!r} is not a percentage; fix the file or "
            'write "" for unknown'
        ) from None


def _eps(record: dict, location: str) -> tuple[str | None, float | None]:
    try:
        return parse_eps(record.get("eps"))
    except SourceError as error:
        raise SourceError(f"{location}: {error}") from None


def _text(value: str | None) -> str | None:
    return None if value in UNKNOWN_VALUES else str(value).strip()


def _parse_json(raw: bytes, where: str) -> dict:
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SourceError(f"{where} is not valid JSON ({error}); fetch the file again") from None
    if not isinstance(record, dict):
        raise SourceError(f"{where} holds a JSON {type(record).__name__}, not a leaderboard entry")
    return record


def _fetch(url: str) -> bytes | None:
    """The body at ``url``; None when the server says it is not there."""
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise SourceError(f"cannot fetch {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        raise SourceError(
            f"cannot fetch {url} ({reason}); check the network or use a local model_info copy"
        ) from None
    # A body shorter than its Content-Length, a connection reset mid-answer (issue 9).
    except (http.client.HTTPException, OSError) as error:
        reason = type(error).__name__ + (f": {error}" if str(error) else "")
        raise SourceError(
            f"cannot fetch {url}: the answer broke off ({' '.join(reason.split())[:120]}); "
            "retry, or use a local model_info copy"
        ) from None


def _is_url(location: str | Path) -> bool:
    return isinstance(location, str) and urllib.parse.urlparse(location).scheme in URL_SCHEMES
