"""Lens classifiers: labels, training, versions, scores, ensembles, top-N ranking and evaluation."""
