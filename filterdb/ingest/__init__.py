"""Ingestion: sources read models, extraction turns their 3x3 convs into rows, the pipeline
writes each model in one transaction (:mod:`filterdb.ingest.pipeline`).
"""

from pathlib import Path

# robustbench's own default cache directory (here, so that `--help` needs no robustbench).
DEFAULT_MODEL_DIR = Path("models")
