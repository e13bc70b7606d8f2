"""Dataclasses of the jobs domain: a job's progress and a stalled chunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class JobState:
    """Progress of one job."""

    job_id: int
    status: str
    n_items: int
    n_done: int
    n_chunks: int
    n_chunks_done: int
    n_chunks_failed: int
    n_retried: int
    message: str | None
    n_items_failed: int = 0
    n_chunks_stalled: int = 0

    @property
    def finished(self) -> bool:
        """True when no chunk is left to run."""
        return self.status in ("done", "failed", "cancelled")


@dataclass
class StalledChunk:
    """A running chunk whose worker stopped beating."""

    job_id: int
    kind: str
    chunk_no: int
    worker: str | None
    started_at: Any
    heartbeat_at: Any
    heartbeat_age_s: float
    n_items: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "chunk_no": self.chunk_no,
            "worker": self.worker,
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "heartbeat_at": None if self.heartbeat_at is None else self.heartbeat_at.isoformat(),
            "heartbeat_age_s": round(self.heartbeat_age_s, 1),
            "n_items": self.n_items,
        }
