"""Celery tasks of lenscat (installed as ``lenscat.tasks``).

Tasks are thin: they take ids and names, open a session, call library code, commit once, and are
safe to run twice (``acks_late``; retries only for transient database/broker errors).
"""
