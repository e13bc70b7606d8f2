"""Model versions: the provenance rows every embedding, score and hit points at."""
