"""Image cutouts: the store, readers, resampling, colour renderings and band set-ups."""
