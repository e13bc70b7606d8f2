"""Spectroscopic lens search: readers, the packed store, detectors and their hits.

A galaxy whose fiber spectrum shows an emission line from a source at higher redshift is a lens
candidate (Bolton et al. 2006; Shu et al. 2016; Li et al. 2018; Karp et al.'s DESI [OII] search).
The pipeline is

* :mod:`lenscat.spectra.readers` (+ :mod:`~lenscat.spectra.redrock`) -- the survey reader table
  (:mod:`~lenscat.spectra.reader_table`; one module per survey) for SDSS/BOSS and DESI files to
  :class:`~lenscat.spectra.spectrum.Spectrum`, with the pipeline's own continuum model;
* :mod:`lenscat.spectra.grid` -- the log-wavelength grids: the Lyα window (3800-5000 A) and the full
  range (3600-10400 A) it is a slice of;
* :mod:`lenscat.spectra.pack` -- the array store scans read at memory speed, with both continua
  (:mod:`~lenscat.spectra.continuum` is the project's fit; :mod:`~lenscat.spectra.continuum_choice`
  picks one per survey by measurement);
* :mod:`lenscat.spectra.detectors` -- the detector interface and registry; the families
  :mod:`~lenscat.spectra.detector_mf`, :mod:`~lenscat.spectra.detector_specnet`,
  :mod:`~lenscat.spectra.detector_ensemble` (Lyα) and :mod:`~lenscat.spectra.detector_oii`
  ([OII] doublets, :mod:`~lenscat.spectra.oii`); line fits in :mod:`~lenscat.spectra.linefit`,
  Lyα vetoes in :mod:`~lenscat.spectra.vetoes`;
* :mod:`lenscat.spectra.scan` (jobs and hits), :mod:`lenscat.spectra.hits` (reading them back),
  :mod:`lenscat.spectra.evaluate` (injection-recovery against matched S/N).
"""
