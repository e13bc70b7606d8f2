"""Sky maps (gravitational-wave and GRB localisations, MOCs): ingest, credible regions, cross-match."""
