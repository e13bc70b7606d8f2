"""Spectroscopic lens search: readers, the packed window store, detectors and their hits.

A galaxy whose fiber spectrum shows an emission line from a source at higher redshift is a lens
candidate (Bolton et al. 2006; Shu et al. 2016; Li et al. 2018). The pipeline is

* :mod:`lenscat.spectra.readers` -- SDSS/BOSS and DESI files to :class:`~lenscat.spectra.spectrum.Spectrum`;
* :mod:`lenscat.spectra.grid` -- the common log-wavelength search window (BOSS pixels, 3800-5000 A);
* :mod:`lenscat.spectra.pack` -- the array store scans read at memory speed;
* detectors (:mod:`lenscat.spectra.matched_filter`, :mod:`lenscat.models.specnet`) and line fits.
"""
