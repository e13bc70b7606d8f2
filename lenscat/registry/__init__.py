"""The model registry: versions (:mod:`.versions`), checkpoint verification (:mod:`.checkpoints`),
loading through one table from architecture to loader (:mod:`.loaders`) and the configured torch
device (:mod:`.device`)."""
