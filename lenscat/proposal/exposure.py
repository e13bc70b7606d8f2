"""Exposure-time hints: time to reach S/N 10 on a lensed arc in imaging, and S/N 5 per resolution
element on its continuum in a long-slit spectrum (the source redshift), with every assumption stated.

The calculator (the usual CCD equation, e.g. Howell, *Handbook of CCD Astronomy*, ch. 4)
-----------------------------------------------------------------------------------------
* Signal: the arc's AB magnitude ``m`` (the lens model's ``arc_mag``; see :func:`arc_magnitude`
  for the fallback) dimmed by extinction ``k_band (X - 1)`` at airmass ``X`` gives a photon rate
  ``S = 10^(-0.4 m) * 3631 Jy * 1.51e7 photons s^-1 m^-2 Jy^-1 * (dlambda/lambda) * A_eff``,
  with ``A_eff = pi (D/2)^2 (1 - obstruction) * throughput`` (telescope, instrument and detector).
* Aperture: the arc is spread along the Einstein ring; the photometric aperture is a ring of
  width one seeing FWHM, area ``max(2 pi theta_E FWHM, pi FWHM^2)`` arcsec^2 (the whole flux is
  assumed inside it).
* Sky: dark-sky AB brightness per band (``DARK_SKY``, typical of Maunakea / Paranal at zenith);
  the Moon adds ``illumination x (bright - dark)`` in flux, bright being the full-Moon sky
  (``BRIGHT_SKY``); the sky in the aperture is ``B = 10^(-0.4 mu) * (same photon factor) * area``.
* Noise: ``N = sqrt(S t + B t + n_pix RN^2)``, ``n_pix = area / pixel^2``, read noise ``RN``
  electrons per pixel in one exposure; dark current is neglected. ``t`` solves ``S t / N = S/N``.

The spectroscopic hint (:func:`spectro_time_to_snr`)
-----------------------------------------------------
The follow-up that confirms a lens is a spectrum of the arc (the source redshift). The same CCD
equation per *resolution element* ``dlambda = lambda / R`` of a long slit of width ``w``:

* Signal: the arc's photons in ``dlambda`` (``1/R`` in place of the filter's ``dlambda/lambda``)
  times the fraction through the slit. The slit is put through the lens centre along the brightest
  images; the arc is taken as a ring of radius ``theta_E`` and width one seeing FWHM, of which the
  slit crosses two stretches of length ``w`` each: ``f = min(1, 2 w / (2 pi theta_E))`` (at least
  the slit loss of a point source, ``erf(w sqrt(ln 2) / FWHM)``, when ``theta_E`` is below a FWHM).
* Sky: the sky in the slit over the extraction length, two stretches of one FWHM each
  (``2 w FWHM`` arcsec^2), in ``dlambda``.
* Read noise: ``n_pix = (2 FWHM / pixel) x pixels_per_resolution_element``.
The default :class:`Spectrograph` is a Keck/LRIS-like long slit (R 1,000, 1″ slit, 20 % total
throughput). It is a planning figure, as any exposure-time calculator, not a guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lenscat.errors import InvalidParameter

PHOTONS_PER_JY = 1.51e7
"""Photons s^-1 m^-2 per Jy per unit dlambda/lambda."""
AB_ZERO_JY = 3631.0

BANDWIDTH = {"u": 0.16, "g": 0.29, "r": 0.23, "i": 0.19, "z": 0.15, "y": 0.10}
"""Fractional bandwidth dlambda/lambda of SDSS/LSST-like filters."""
DARK_SKY = {"u": 22.0, "g": 22.3, "r": 21.2, "i": 20.3, "z": 19.2, "y": 18.3}
"""Dark-sky brightness at zenith [AB mag arcsec^-2]."""
BRIGHT_SKY = {"u": 18.0, "g": 19.0, "r": 19.0, "i": 18.8, "z": 18.2, "y": 17.6}
"""Full-Moon sky brightness [AB mag arcsec^-2] (Moon ~45 deg away)."""
EXTINCTION = {"u": 0.45, "g": 0.15, "r": 0.10, "i": 0.07, "z": 0.05, "y": 0.05}
"""Atmospheric extinction per airmass [mag]."""

DEFAULT_ARC_MAG = 22.5
"""Fallback arc magnitude (AB) when neither the model nor the lens galaxy gives one."""
ARC_MINUS_LENS = 2.0
"""Fallback: the arc is this much fainter than the lens galaxy in the same band [mag]."""


@dataclass(frozen=True)
class Instrument:
    """A telescope and imager for the calculator."""

    aperture_m: float = 8.0
    obstruction: float = 0.1
    throughput: float = 0.35
    pixel_arcsec: float = 0.2
    read_noise_e: float = 5.0
    seeing_arcsec: float = 0.8


@dataclass(frozen=True)
class Spectrograph:
    """A telescope and long-slit spectrograph for the spectroscopic hint (module docstring)."""

    aperture_m: float = 10.0
    obstruction: float = 0.1
    throughput: float = 0.20
    resolution: float = 1000.0
    slit_arcsec: float = 1.0
    pixel_arcsec: float = 0.135
    pixels_per_resel: float = 3.0
    read_noise_e: float = 4.0
    seeing_arcsec: float = 0.8


def slit_fraction(theta_e_arcsec: float, spec: Spectrograph) -> float:
    """Fraction of a ring-like arc's flux through a slit through the lens centre (module docstring)."""
    w, fwhm = spec.slit_arcsec, spec.seeing_arcsec
    point = math.erf(w * math.sqrt(math.log(2.0)) / fwhm)
    ring = 2.0 * w / (2.0 * math.pi * max(theta_e_arcsec, 1e-6))
    return min(1.0, max(ring, point if theta_e_arcsec < fwhm else 0.0))


def spectro_time_to_snr(
    mag: float,
    band: str,
    *,
    theta_e_arcsec: float,
    airmass: float = 1.2,
    moon_illumination: float = 0.0,
    snr: float = 5.0,
    spec: Spectrograph = Spectrograph(),
) -> float:
    """Exposure time [s] to reach ``snr`` per resolution element on the arc's continuum in ``band``.

    Raises
    ------
    InvalidParameter
        Non-finite magnitude, airmass below 1, a non-positive S/N or a bad band.
    """
    _check_request(mag, airmass, snr)
    s, sky, read_var = _spectro_rates(mag, band, theta_e_arcsec, airmass, moon_illumination, spec)
    return _solve_time(s, sky, read_var, snr)


def spectro_snr_after(
    mag: float,
    band: str,
    seconds: float,
    *,
    theta_e_arcsec: float,
    airmass: float = 1.2,
    moon_illumination: float = 0.0,
    spec: Spectrograph = Spectrograph(),
) -> float:
    """S/N per resolution element after ``seconds`` (the forward form of :func:`spectro_time_to_snr`)."""
    s, sky, read_var = _spectro_rates(mag, band, theta_e_arcsec, airmass, moon_illumination, spec)
    return s * seconds / math.sqrt((s + sky) * seconds + read_var)


def _spectro_rates(
    mag: float, band: str, theta_e_arcsec: float, airmass: float, moon_illumination: float, spec: Spectrograph
) -> tuple[float, float, float]:
    """Arc and sky photons per second per resolution element, and the read-noise variance [e^2]."""
    b = _band(band)
    area_eff = math.pi * (spec.aperture_m / 2) ** 2 * (1 - spec.obstruction) * spec.throughput
    per_resel = AB_ZERO_JY * PHOTONS_PER_JY / spec.resolution * area_eff
    s = 10 ** (-0.4 * (mag + EXTINCTION[b] * (airmass - 1.0))) * per_resel * slit_fraction(theta_e_arcsec, spec)
    extraction = 2.0 * spec.seeing_arcsec
    sky = 10 ** (-0.4 * sky_brightness(b, moon_illumination)) * per_resel * spec.slit_arcsec * extraction
    npix = extraction / spec.pixel_arcsec * spec.pixels_per_resel
    return s, sky, npix * spec.read_noise_e**2


def _check_request(mag: float, airmass: float, snr: float) -> None:
    """Raise :class:`InvalidParameter` for a non-finite magnitude, airmass below 1 or S/N <= 0."""
    if not math.isfinite(mag):
        raise InvalidParameter("mag", "{mag} must be finite")
    if not airmass >= 1.0:
        raise InvalidParameter("airmass", f"{{airmass}} must be at least 1, not {airmass}")
    if not snr > 0:
        raise InvalidParameter("snr", "{snr} must be positive")


def _solve_time(signal: float, sky: float, read_var: float, snr: float) -> float:
    """``t`` with ``signal t / sqrt(signal t + sky t + read_var) = snr`` (rates per second)."""
    a2 = signal * signal
    b1 = -(snr**2) * (signal + sky)
    c0 = -(snr**2) * read_var
    return (-b1 + math.sqrt(b1 * b1 - 4 * a2 * c0)) / (2 * a2)


def sky_brightness(band: str, moon_illumination: float) -> float:
    """Sky brightness [AB mag arcsec^-2] in ``band`` for a Moon illuminated fraction 0-1."""
    b = _band(band)
    f = min(max(float(moon_illumination), 0.0), 1.0)
    dark = 10 ** (-0.4 * DARK_SKY[b])
    bright = 10 ** (-0.4 * BRIGHT_SKY[b])
    return -2.5 * math.log10(dark + f * (bright - dark))


def _band(band: str) -> str:
    b = str(band).strip().lower()[:1]
    if b not in BANDWIDTH:
        raise InvalidParameter("band", f"{{band}} {band!r} is not one of {', '.join(BANDWIDTH)}")
    return b


def photon_rate(mag: float, band: str, inst: Instrument) -> float:
    """Detected photons per second of a source of AB magnitude ``mag`` in ``band``."""
    b = _band(band)
    area = math.pi * (inst.aperture_m / 2) ** 2 * (1 - inst.obstruction) * inst.throughput
    return 10 ** (-0.4 * mag) * AB_ZERO_JY * PHOTONS_PER_JY * BANDWIDTH[b] * area


def time_to_snr(
    mag: float,
    band: str,
    *,
    theta_e_arcsec: float,
    airmass: float = 1.2,
    moon_illumination: float = 0.0,
    snr: float = 10.0,
    inst: Instrument = Instrument(),
) -> float:
    """Exposure time [s] to reach ``snr`` on the arc in the ring aperture (module docstring).

    Raises
    ------
    InvalidParameter
        Non-finite magnitude, airmass below 1 or a non-positive S/N.
    """
    _check_request(mag, airmass, snr)
    b = _band(band)
    fwhm = inst.seeing_arcsec
    area = max(2 * math.pi * max(theta_e_arcsec, 0.0) * fwhm, math.pi * fwhm**2)
    s = photon_rate(mag + EXTINCTION[b] * (airmass - 1.0), b, inst)
    sky = photon_rate(sky_brightness(b, moon_illumination), b, inst) * area
    npix = area / inst.pixel_arcsec**2
    return _solve_time(s, sky, npix * inst.read_noise_e**2, snr)


def snr_after(
    mag: float,
    band: str,
    seconds: float,
    *,
    theta_e_arcsec: float,
    airmass: float = 1.2,
    moon_illumination: float = 0.0,
    inst: Instrument = Instrument(),
) -> float:
    """S/N on the arc after ``seconds`` (the forward form of :func:`time_to_snr`)."""
    b = _band(band)
    fwhm = inst.seeing_arcsec
    area = max(2 * math.pi * max(theta_e_arcsec, 0.0) * fwhm, math.pi * fwhm**2)
    s = photon_rate(mag + EXTINCTION[b] * (airmass - 1.0), b, inst) * seconds
    sky = photon_rate(sky_brightness(b, moon_illumination), b, inst) * area * seconds
    return s / math.sqrt(s + sky + area / inst.pixel_arcsec**2 * inst.read_noise_e**2)


def arc_magnitude(arc_mag: float | None, lens_mag: float | None) -> tuple[float, str]:
    """The arc magnitude to plan with and where it came from: 'model', 'lens+2.0' or 'default'.

    The model's ``arc_mag`` when there is one; else the lens galaxy's magnitude plus
    :data:`ARC_MINUS_LENS` (ground-based lens samples: arcs a few times fainter than the deflector);
    else :data:`DEFAULT_ARC_MAG`.
    """
    if arc_mag is not None and math.isfinite(arc_mag):
        return float(arc_mag), "model"
    if lens_mag is not None and math.isfinite(lens_mag):
        return float(lens_mag) + ARC_MINUS_LENS, f"lens+{ARC_MINUS_LENS:.1f}"
    return DEFAULT_ARC_MAG, "default"
