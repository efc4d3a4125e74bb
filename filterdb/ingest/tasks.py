"""What Dask workers run for an ingest: hash, read and extract one model's checkpoint.

Workers never open the database: they hand the hash, then the extracted model (its
layers' float32 filters as numpy arrays, which Dask sends without copying them through
pickle), back to the client, which alone writes the warehouse.
"""

from __future__ import annotations

import time

import torch

from filterdb.ingest.extract import extract
from filterdb.ingest.sources.base import Candidate, check_weights_fit_files, files_sha256
from filterdb.warehouse.records import ExtractedModel


def hash_candidate(candidate: Candidate) -> tuple[str, float]:
    """The SHA-256 of the candidate's checkpoint files, and the seconds it took."""
    start = time.perf_counter()
    return files_sha256(candidate.paths), time.perf_counter() - start


def read_and_extract(
    candidate: Candidate,
    sha256: str,
    *,
    device: str | torch.device,
    allow_nonfinite: bool,
) -> tuple[ExtractedModel, tuple[str, ...], dict[str, float]]:
    """Read and extract the candidate as :func:`filterdb.ingest.pipeline.ingest` does.

    Returns the extracted model, the source's notes and the seconds of each phase
    (``read``, ``extract``); a :class:`~filterdb.errors.FilterdbError` reaches the client
    as raised.
    """
    start = time.perf_counter()
    source = candidate.read()
    source.info.checkpoint_sha256 = sha256
    check_weights_fit_files(source, candidate.paths)
    read = time.perf_counter()
    extracted = extract(source, device=device, allow_nonfinite=allow_nonfinite)
    seconds = {"read": read - start, "extract": time.perf_counter() - read}
    return extracted, tuple(source.notes), seconds
