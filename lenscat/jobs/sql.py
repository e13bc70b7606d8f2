"""SQL text shared by several functions of the jobs domain."""

from __future__ import annotations

STALLED = "c.status = 'running' AND coalesce(c.heartbeat_at, c.started_at) < now() - make_interval(secs => :stall)"
"""Condition on ``lenscat.job_chunks c``: a running chunk whose last heartbeat (or start) is older
than ``:stall`` seconds."""
