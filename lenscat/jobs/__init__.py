"""Work done by Celery workers: chunk bookkeeping, progress, and scheduled re-processing."""
