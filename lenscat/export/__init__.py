"""The candidate catalogue for follow-up: tables, files, galleries and summaries."""
