"""Simulated surveys, catalogues and injection sets (two independent simulation paths)."""
