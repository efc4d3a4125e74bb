"""Ingestion: sources read models, extraction turns their 3x3 convs into rows, the pipeline
writes each model in one transaction (:mod:`filterdb.ingest.pipeline`).
"""
