"""Graders and their grades: accounts, logins, append-only grades and consensus."""
