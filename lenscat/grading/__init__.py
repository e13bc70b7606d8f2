"""Graders and their grades: accounts, logins, append-only grades, consensus, and what the inspection pages show.

* :mod:`~lenscat.grading.grades`: grade letters, recording grades, consensus and conflict tables, human labels.
* :mod:`~lenscat.grading.accounts`: grader accounts, passwords, API tokens.
* :mod:`~lenscat.grading.auth`: web logins (sessions, throttling, CSRF tokens).
* :mod:`~lenscat.grading.inspection`: what an inspection grid shows.
* :mod:`~lenscat.grading.candidate`: the candidate page, cutout images and the search box.
* :mod:`~lenscat.grading.service`: reads of the grading state (counts, a source's consensus).
"""
