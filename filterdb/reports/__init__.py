"""Reports: the robust-vs-normal report, model comparison, plots, documents, exports."""
