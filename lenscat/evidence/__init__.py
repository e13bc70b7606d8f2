"""Joint evidence per candidate: image score, grades, spectra, lens model and literature in one ranking."""
