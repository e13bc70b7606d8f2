"""Tabular input and output at the user edge: readers, structure checks, columns, output formats."""
