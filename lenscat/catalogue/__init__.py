"""Sources of a survey: ingest, the files they point at, surveys and their bands."""
