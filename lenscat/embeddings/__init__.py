"""Image embeddings: encoder versions, embedding jobs, pgvector storage, similarity and anomaly."""
