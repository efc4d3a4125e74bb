"""Files of Hugging Face Hub repositories, through huggingface_hub's own cache and client.

The environment is read at each call, not at import (huggingface_hub reads it once when
imported): ``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ``~/.cache/huggingface/hub``;
``HF_HUB_OFFLINE=1`` for the cache only; ``HF_ENDPOINT`` for another server. The cache is
huggingface_hub's layout, ``models--ORG--NAME/{blobs/<sha256>, refs/<revision>,
snapshots/<commit>/<file>}``, so files fetched by timm, transformers or ``hf download``
are found here and the other way round.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filterdb.errors import CheckpointMissing, SourceError

_TRUE = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps its cache, by the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


@dataclass(frozen=True)
class HubFile:
    """A file of a Hub repository in the local cache, and the commit it belongs to."""

    repo_id: str
    filename: str
    path: Path
    commit: str

    @property
    def uri(self) -> str:
        """``hf://<repo>@<commit>``: the repository and the revision the file came from."""
        return f"hf://{self.repo_id}@{self.commit}"


def hub_file(repo_id: str, filename: str, *, revision: str | None = None) -> HubFile | None:
    """``filename`` of ``repo_id`` at ``revision`` (default main), downloaded when needed.

    Returns ``None`` when the repository has no such file (online), or the cache lacks it
    offline while it has other files of that revision (the file is then taken as absent).
    Raises :class:`CheckpointMissing` offline when nothing of the revision is cached, and
    :class:`SourceError` for an unknown repository or revision or an unreachable server.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache, offline = hub_cache_dir(), hub_offline()
    try:
        with _quiet_hub_logger(), _offline_as_now(offline):
            path = hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache,
                local_files_only=offline,
                endpoint=os.environ.get("HF_ENDPOINT") or None,
            )
    except LocalEntryNotFoundError:
        if _revision_cached(cache, repo_id, revision):
            return None
        expected = expected_path(repo_id, filename, revision=revision)
        if not offline:  # huggingface_hub falls back to the cache when the Hub is unreachable
            raise CheckpointMissing(
                f"cannot reach the Hub for {filename} of {repo_id}, and the cache lacks it "
                f"(expected at {expected}); check the network or HF_ENDPOINT"
            ) from None
        raise CheckpointMissing(
            f"{filename} of {repo_id} is not in the Hub cache (expected at {expected}) and "
            f"HF_HUB_OFFLINE is set; run once online (unset HF_HUB_OFFLINE) or "
            f"`hf download {repo_id} {filename}`"
        ) from None
    except RepositoryNotFoundError:
        raise SourceError(
            f"the Hub has no repository {repo_id} (or it is private); check the name"
        ) from None
    except RevisionNotFoundError:
        raise SourceError(f"{repo_id} has no revision {revision}; check @REVISION") from None
    except EntryNotFoundError:
        return None
    except (HfHubHTTPError, OSError) as error:
        reason = " ".join(str(error).split())[:160]
        raise SourceError(
            f"cannot fetch {filename} of {repo_id} ({reason}); check the network, or fill "
            "the cache and set HF_HUB_OFFLINE=1"
        ) from None
    path = Path(path)
    return HubFile(repo_id, filename, path, commit=path.parent.name)


@contextmanager
def _offline_as_now(offline: bool) -> Iterator[None]:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import, and its HTTP hook refuses every
    # request while it was set then: follow the environment as it is at this call.
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


@contextmanager
def _quiet_hub_logger() -> Iterator[None]:
    # huggingface_hub logs a warning line for an unreachable server before raising; the
    # error below says it in one line already.
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def expected_path(repo_id: str, filename: str, *, revision: str | None = None) -> Path:
    """Where huggingface_hub's cache keeps ``filename`` of ``repo_id`` at ``revision``."""
    repo = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    commit = revision or "main"
    ref = repo / "refs" / commit
    if ref.is_file():
        commit = ref.read_text().strip()
    return repo / "snapshots" / (commit if ref.is_file() or revision else "<commit>") / filename


def _revision_cached(cache: Path, repo_id: str, revision: str | None) -> bool:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text().strip() if ref.is_file() else revision
    return bool(commit) and (repo / "snapshots" / commit).is_dir()
