"""Published lens lists: ingest, and their cross-matches with the catalogue's sources."""
