"""Proposal pieces without a database: sites, observability against astropy's AltAz, the exposure formula,
the Keck starlist read back, and a finding chart's size and orientation."""

from __future__ import annotations

import datetime as dt
import math
import socket

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import AltAz, SkyCoord, get_body
from astropy.time import Time

from lenscat.errors import InvalidParameter
from lenscat.proposal import exposure
from lenscat.proposal.charts import DPI, FIG_INCHES, chart_figure, save_chart
from lenscat.proposal.observability import altitudes, night_dates, observability, offline_iers
from lenscat.proposal.sites import resolve_site
from lenscat.proposal.starlists import ds9_regions, keck_name, keck_starlist, parse_keck_starlist


def test_sites_by_name_alias_and_coordinates():
    keck = resolve_site("Keck Observatory")
    assert keck.key == "keck" and keck.latitude_deg == pytest.approx(19.8283, abs=1e-3)
    assert resolve_site("VLT").key == "paranal" and resolve_site("gemini-south").key == "gemini_south"
    custom = resolve_site("-30.5, 289.2, 2.2km")
    assert custom.longitude_deg == pytest.approx(-70.8) and custom.height_m == pytest.approx(2200)
    with pytest.raises(InvalidParameter, match="unknown site 'atlantis'"):
        resolve_site("atlantis")
    with pytest.raises(InvalidParameter, match="latitude must be"):
        resolve_site("95,0,0")
    with pytest.raises(InvalidParameter, match="end 2026-01-01 is before start 2026-02-01"):
        night_dates(dt.date(2026, 2, 1), dt.date(2026, 1, 1))


def test_altitudes_match_astropy_altaz():
    site = resolve_site("paranal")
    rng = np.random.default_rng(3)
    coords = SkyCoord(rng.uniform(0, 360, 6) * u.deg, rng.uniform(-80, 30, 6) * u.deg)
    times = Time(["2026-12-10T02:00", "2026-12-10T06:30", "2027-01-03T23:15"], scale="utc")
    fast = altitudes(coords, times, site.location)
    with offline_iers():
        ref = coords[:, None].transform_to(AltAz(obstime=times[None, :], location=site.location)).alt.deg
    assert np.abs(fast - ref).max() < 5 / 3600  # a few arcsec


def test_observability_offline_and_consistent(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("observability tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    site = resolve_site("keck")
    # one target transiting at midnight near the zenith in mid-December, one never above 30 deg
    coords = SkyCoord([85.0, 85.0] * u.deg, [20.0, -75.0] * u.deg)
    obs = observability(coords, site, dt.date(2026, 12, 14), dt.date(2026, 12, 16), min_altitude=30 * u.deg)
    assert obs.hours.shape == (2, 3)
    assert (obs.dark_hours > 9).all() and (obs.dark_hours < 12).all()  # winter nights at 20 deg N
    assert (obs.hours[0] > 8).all() and (obs.hours[0] <= obs.dark_hours + 1e-9).all()
    assert (obs.hours[1] == 0).all() and np.isnan(obs.best_airmass[1]).all()
    assert obs.best_airmass[0] == pytest.approx(1.0, abs=0.01)
    # new Moon on 2026-12-09: a waxing Moon, about a third to a half lit
    assert (obs.moon_illumination > 0.25).all() and (obs.moon_illumination < 0.6).all()
    assert np.all(np.diff(obs.moon_illumination) > 0)
    # the best airmass and the Moon separation at the best time, against astropy's AltAz
    when = Time(obs.best_time[0][1], scale="utc")
    with offline_iers():
        frame = AltAz(obstime=when, location=site.location)
        target = coords[0].transform_to(frame)
        moon = get_body("moon", when, site.location).transform_to(frame)
    assert obs.best_airmass[0, 1] == pytest.approx(float(target.secz), abs=2e-4)
    assert obs.moon_sep_deg[0, 1] == pytest.approx(float(target.separation(moon).deg), abs=0.05)
    summ = obs.summary()
    assert summ["obs_nights"].tolist() == [3, 0] and summ["obs_best_night"][1] == ""
    with pytest.raises(InvalidParameter, match="min_altitude"):
        observability(coords, site, dt.date(2026, 12, 14), dt.date(2026, 12, 15), min_altitude=95 * u.deg)


def test_exposure_formula_inverts_and_scales():
    inst = exposure.Instrument()
    t = exposure.time_to_snr(23.0, "g", theta_e_arcsec=1.2, airmass=1.2, moon_illumination=0.1, inst=inst)
    assert exposure.snr_after(23.0, "g", t, theta_e_arcsec=1.2, airmass=1.2, moon_illumination=0.1) == pytest.approx(
        10.0, rel=1e-9
    )
    # background-limited: one magnitude fainter costs ~10^0.8 = 6.3x the time; brighter sky costs more
    t1 = exposure.time_to_snr(24.0, "g", theta_e_arcsec=1.2, airmass=1.2, moon_illumination=0.1, inst=inst)
    assert 5.0 < t1 / t < 6.4
    bright = exposure.time_to_snr(23.0, "g", theta_e_arcsec=1.2, airmass=1.2, moon_illumination=1.0, inst=inst)
    assert bright > 3 * t
    assert exposure.sky_brightness("r", 0.0) == pytest.approx(exposure.DARK_SKY["r"])
    assert exposure.sky_brightness("r", 1.0) == pytest.approx(exposure.BRIGHT_SKY["r"])
    # photon rate: AB 0 through a 1 m^2 perfect aperture in r
    one = exposure.Instrument(aperture_m=2 / np.sqrt(np.pi), obstruction=0.0, throughput=1.0)
    assert exposure.photon_rate(0.0, "r", one) == pytest.approx(3631 * 1.51e7 * 0.23, rel=1e-9)
    assert exposure.arc_magnitude(None, 20.0) == (22.0, "lens+2.0")
    assert exposure.arc_magnitude(21.3, 20.0) == (21.3, "model")
    assert exposure.arc_magnitude(None, None) == (22.5, "default")


def test_spectroscopic_hint_inverts_and_scales():
    spec = exposure.Spectrograph()
    kw = {"theta_e_arcsec": 1.5, "airmass": 1.3, "moon_illumination": 0.2}
    t = exposure.spectro_time_to_snr(22.0, "r", spec=spec, **kw)
    assert exposure.spectro_snr_after(22.0, "r", t, spec=spec, **kw) == pytest.approx(5.0, rel=1e-9)
    # a spectrum of a 22nd-magnitude arc on a 10 m telescope: minutes to hours, never seconds or nights
    assert 300 < t < 20000
    # sky-limited per resolution element: one magnitude fainter costs nearly 10^0.8 = 6.3x
    assert 4.5 < exposure.spectro_time_to_snr(23.0, "r", spec=spec, **kw) / t < 6.4
    # a wider ring spreads the arc along more of the circle than the slit crosses: longer
    assert exposure.spectro_time_to_snr(22.0, "r", spec=spec, **(kw | {"theta_e_arcsec": 3.0})) > 1.5 * t
    # slit fraction: 2w / (2 pi theta_E) for a ring, the point-source slit loss below one FWHM
    assert exposure.slit_fraction(2.0, spec) == pytest.approx(2 * 1.0 / (2 * np.pi * 2.0))
    point = math.erf(1.0 * math.sqrt(math.log(2.0)) / 0.8)
    assert exposure.slit_fraction(0.5, spec) == pytest.approx(max(1 / (np.pi * 0.5), point))
    # higher resolution spreads the same photons over narrower elements
    hires = exposure.Spectrograph(resolution=4000.0)
    assert exposure.spectro_time_to_snr(22.0, "r", spec=hires, **kw) > 3 * t
    with pytest.raises(InvalidParameter, match="airmass"):
        exposure.spectro_time_to_snr(22.0, "r", airmass=0.5, theta_e_arcsec=1.0)
    with pytest.raises(InvalidParameter, match="band"):
        exposure.spectro_time_to_snr(22.0, "Q", theta_e_arcsec=1.0)


def test_keck_starlist_round_trip_and_ds9():
    coords = SkyCoord([10.5, 359.999999, 150.123456] * u.deg, [-0.5, 89.99, -45.9999999] * u.deg)
    names = ["J0042-0030 lens", "averyveryverylongname", "x"]
    text = keck_starlist(names, coords, keywords=[{"rmag": "19.5"}, {}, {}], comments=["prio 1", "", ""])
    lines = text.splitlines()
    assert lines[0].startswith("J0042-0030_lens 00 42 00.00 -00 30 00.0 2000.0 rmag=19.5 # prio 1")
    assert lines[1][:15] == "averyveryverylo" and lines[1][16:27] == "00 00 00.00"  # RA rounds to 00h, not 24h
    assert all(line[15] == " " and line[40:46] == "2000.0" for line in lines)
    back = parse_keck_starlist(text)
    assert [b[0] for b in back] == [keck_name(n).strip() for n in names] and back[0][2] == {"rmag": "19.5"}
    sep = SkyCoord([b[1] for b in back]).separation(coords).arcsec
    assert sep.max() < 0.1
    reg = ds9_regions(names, coords)
    assert reg.count("circle(") == 3 and "text={J0042-0030 lens}" in reg


def test_finding_chart_size_and_orientation(tmp_path):
    from PIL import Image

    img = np.zeros((64, 64, 3), dtype=np.uint8)
    img[52:60, 4:12] = (255, 0, 0)  # stored rows: 0 = South; columns: 0 = East -> a North-East patch
    fig = chart_figure(img, 0.25, title="J1000+0230", subtitle="test")
    ax = fig.axes[0]
    centre = ax.transData.transform((0, 0))
    east = ax.transData.transform((3, 0))
    north = ax.transData.transform((0, 3))
    assert east[0] < centre[0] and north[1] > centre[1]  # East left, North up (display y grows upwards)
    labels = {t.get_gid(): ax.transData.transform(t.get_position()) for t in ax.texts if t.get_gid()}
    assert labels["compass-E"][0] < labels["compass-N"][0] and labels["compass-N"][1] > labels["compass-E"][1]
    png, pdf = tmp_path / "c.png", tmp_path / "c.pdf"
    save_chart(fig, png, pdf)
    im = np.asarray(Image.open(png).convert("RGB"))
    assert im.shape[:2] == (int(FIG_INCHES[1] * DPI), int(FIG_INCHES[0] * DPI))
    ys, xs = np.nonzero((im[..., 0] > 200) & (im[..., 1] < 60) & (im[..., 2] < 60))
    ax_px = ax.get_window_extent()
    mid_x, mid_y = (ax_px.x0 + ax_px.x1) / 2, im.shape[0] - (ax_px.y0 + ax_px.y1) / 2
    assert xs.mean() < mid_x and ys.mean() < mid_y  # the North-East patch is drawn top left
    assert pdf.read_bytes().startswith(b"%PDF-")
