#!/usr/bin/env python
"""Benchmark: the lens modelling network (issue 33) -- accuracy, calibration, speed, vetting.

One run, fixed seeds:

(a) trains a version on ``--n`` lenses of the default (lenstronomy) simulator (80 / 10 / 10 split,
    σ calibrated on the last 10 %), exactly as ``lenscat model train`` does
    (:func:`lenscat.modelling.training.fit_and_calibrate`), without a database;
(b) evaluates it on ``--n-eval`` lenses of the independent numpy simulator (never trained on):
    bias (median residual), scatter (standard deviation) and NMAD per parameter, coverage of the
    68 % and 95 % intervals, all lenses and θ_E >= 1″, against the training-median baseline;
(c) throughput on ``--threads`` CPU threads: cutouts/s of the network alone and with vetting;
(d) lenstronomy's own fitting (``FittingSequence``: PSO then MCMC; SIE + SHEAR, Sersic lens light
    and source, the r band, a Gaussian PSF of the true FWHM) on ``--n-fit`` of the same cutouts:
    θ_E error and seconds per cutout side by side with the network's, and the speed ratio;
(e) vetting on simulations: the flagged fraction of lenses (completeness lost) and of non-lens
    impostors of each kind (removed), and the purity of a 1:1 lens : impostor list before and after;
(f) the forward-model refinement (:mod:`lenscat.models.lensfit`, ``--refine-steps`` > 0) of the
    same predictions on the same independent lenses, its σ calibrated on ``--n-refine-calib``
    held-out lenses of the default simulator (seed + 77, never the independent one): the same
    metrics beside the network's, the accepted fraction, and cutouts/s of network + refinement.

``--checkpoint FILE`` skips (a): the members of a saved version (a lenscat checkpoint, or a dict
of ``members`` state dicts as the experiments saved) are judged instead; without stored σ factors
they are calibrated on the held-out default-simulator lenses of (f).

Usage::

    python bench/lensmodel.py [--n 6000] [--epochs 20] [--n-eval 1000] [--n-fit 5] [--threads 2]
    python bench/lensmodel.py --checkpoint /tmp/lensmodel/e20w16.pt --n-fit 0 --n-vet 0

Figures go to stdout as JSON (``--out FILE`` also writes them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchutil import loadavg, machine_info

from lenscat.modelling.evaluation import baseline_predictions, independent_lens_set, parameter_metrics
from lenscat.modelling.modeller import Modeller
from lenscat.modelling.training import LensTrainOptions, fit_and_calibrate
from lenscat.modelling.training_set import simulate_lens_set
from lenscat.modelling.vetting import VetRules, vet
from lenscat.models.lensmodel_train import members_from
from lenscat.models.preprocess import Preprocessing

NONLENS = ("elliptical", "spiral", "ring", "blue_companion", "merger", "close_pair", "disk")


def fit_lenstronomy(
    window: np.ndarray, fwhm: float, *, n_particles: int, n_pso: int, n_mcmc: int, seed: int
) -> dict[str, Any]:
    """PSO + MCMC fit of SIE + SHEAR with Sersic lens light and source to the r band of one window.

    The coordinates are the sky frame (x East, y North): lenstronomy's pixel-to-angle matrix
    ``[[-s, 0], [0, s]]`` maps the FITS-orientation window (east left) onto it.
    """
    from lenstronomy.Workflow.fitting_sequence import FittingSequence

    np.random.seed(seed)  # noqa: NPY002 - lenstronomy's PSO and emcee draw from the global state
    img = np.asarray(window[1], dtype=np.float64)
    n, s = img.shape[0], 0.262
    c = n // 2
    edge = np.concatenate([img[:4].ravel(), img[-4:].ravel(), img[:, :4].ravel(), img[:, -4:].ravel()])
    rms = float(1.4826 * np.median(np.abs(edge - np.median(edge))))
    kwargs_data = {
        "image_data": img,
        "background_rms": rms,
        "exposure_time": 1e4,
        "ra_at_xy_0": c * s,
        "dec_at_xy_0": -c * s,
        "transform_pix2angle": np.array([[-s, 0.0], [0.0, s]]),
    }
    kwargs_psf = {"psf_type": "GAUSSIAN", "fwhm": float(fwhm)}
    kwargs_model = {
        "lens_model_list": ["SIE", "SHEAR"],
        "source_light_model_list": ["SERSIC_ELLIPSE"],
        "lens_light_model_list": ["SERSIC_ELLIPSE"],
    }
    lens = [
        [{"theta_E": 1.5, "e1": 0.0, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}, {"gamma1": 0.0, "gamma2": 0.0}],
        [{"theta_E": 0.5, "e1": 0.1, "e2": 0.1, "center_x": 0.1, "center_y": 0.1}, {"gamma1": 0.05, "gamma2": 0.05}],
        [{}, {"ra_0": 0.0, "dec_0": 0.0}],
        [
            {"theta_E": 0.3, "e1": -0.5, "e2": -0.5, "center_x": -0.6, "center_y": -0.6},
            {"gamma1": -0.3, "gamma2": -0.3},
        ],
        [{"theta_E": 4.0, "e1": 0.5, "e2": 0.5, "center_x": 0.6, "center_y": 0.6}, {"gamma1": 0.3, "gamma2": 0.3}],
    ]
    sersic = {"R_sersic": 0.3, "n_sersic": 1.0, "e1": 0.0, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}
    sersic_sig = {"R_sersic": 0.2, "n_sersic": 0.5, "e1": 0.2, "e2": 0.2, "center_x": 0.5, "center_y": 0.5}
    lo = {"R_sersic": 0.03, "n_sersic": 0.5, "e1": -0.5, "e2": -0.5, "center_x": -3.0, "center_y": -3.0}
    hi = {"R_sersic": 3.0, "n_sersic": 6.0, "e1": 0.5, "e2": 0.5, "center_x": 3.0, "center_y": 3.0}
    light = [
        [{**sersic, "R_sersic": 1.0, "n_sersic": 4.0}],
        [{**sersic_sig, "center_x": 0.1, "center_y": 0.1}],
        [{}],
        [{**lo, "center_x": -0.6, "center_y": -0.6}],
        [{**hi, "R_sersic": 5.0, "n_sersic": 8.0, "center_x": 0.6, "center_y": 0.6}],
    ]
    source = [[sersic], [sersic_sig], [{}], [lo], [hi]]
    kwargs_params = {"lens_model": lens, "source_model": source, "lens_light_model": light}
    fs = FittingSequence(
        {"multi_band_list": [[kwargs_data, kwargs_psf, {"supersampling_factor": 1}]], "multi_band_type": "single-band"},
        kwargs_model,
        {"joint_lens_with_light": [[0, 0, ["center_x", "center_y"]]]},
        {"source_marg": False},
        kwargs_params,
    )
    t0 = time.perf_counter()
    fs.fit_sequence(
        [
            ["PSO", {"sigma_scale": 1.0, "n_particles": n_particles, "n_iterations": n_pso}],
            ["MCMC", {"n_burn": n_mcmc, "n_run": n_mcmc, "walkerRatio": 4, "sigma_scale": 0.1, "progress": False}],
        ]
    )
    sec = time.perf_counter() - t0
    best = fs.best_fit()
    kl, ks = best["kwargs_lens"][0], best["kwargs_lens"][1]
    src = best["kwargs_source"][0]
    return {
        "seconds": sec,
        "theta_e": float(kl["theta_E"]),
        "e1": float(kl["e1"]),
        "e2": float(kl["e2"]),
        "gamma1": float(ks["gamma1"]),
        "gamma2": float(ks["gamma2"]),
        "center_x": float(kl["center_x"]),
        "center_y": float(kl["center_y"]),
        "source_x": float(src["center_x"]),
        "source_y": float(src["center_y"]),
    }


def load_version(path: Path) -> Modeller:
    """A :class:`Modeller` from a lenscat checkpoint or a bare ``{"members": [state_dict, ...]}`` file.

    Bare files carry no preprocessing or σ factors: g, r, z (plus the lens-subtracted bands when the
    first convolution reads 5 + 2 channels) at the DECaLS stretch, factors 1 until calibrated.
    """
    from lenscat.modelling.modeller import input_preprocessing, read_checkpoint
    from lenscat.models.lensmodel import LensModelNet

    ck = torch.load(path, map_location="cpu", weights_only=True)
    if "format" in ck:
        return read_checkpoint(path)
    nets = []
    for sd in ck["members"]:
        w = sd["features.0.0.weight"]
        net = LensModelNet(in_channels=int(w.shape[1]) - 2, crop=48, width=int(w.shape[0]))
        net.load_state_dict(sd)
        nets.append(net.eval())
    residual = nets[0].in_channels == 5
    return Modeller(nets, input_preprocessing(48, residual), np.ones(9), residual=residual)


def refinement_rows(
    modeller: Modeller, calib: Any, ev: Any, mu: np.ndarray, sig: np.ndarray, steps: int, threads: int
) -> tuple[dict[str, Any], np.ndarray]:
    """(f): refinement σ factors on ``calib`` (default simulator), then refined metrics on ``ev`` (and the means)."""
    from lenscat.modelling.modeller import refinement_factors
    from lenscat.models.lensfit import FitOptions

    opts = FitOptions(steps=steps)
    out: dict[str, Any] = {"options": {k: str(v) for k, v in vars(opts).items()}}
    t0 = time.perf_counter()
    modeller.refine_calibration = refinement_factors(modeller, calib.images, calib.targets, opts)
    out["calibration_seconds"] = round(time.perf_counter() - t0, 1)
    out["calibration"] = [round(float(v), 3) for v in modeller.refine_calibration]
    t0 = time.perf_counter()
    r = modeller.refine(ev.images, mu, sig, options=opts)
    out["seconds_1_thread"] = round(time.perf_counter() - t0, 1)
    out["accepted"] = round(float(r.refined.mean()), 4)
    out["rejected_reasons"] = _reasons([[x] for x in r.reasons if x])
    big = ev.targets[:, 0] >= 1.0
    out["independent_all"] = parameter_metrics(r.mu, r.sigma, ev.targets)
    out["independent_theta_ge_1"] = parameter_metrics(r.mu[big], r.sigma[big], ev.targets[big])
    out["load_before_throughput"] = loadavg()
    torch.set_num_threads(threads)
    n = min(len(ev), 256)
    t0 = time.perf_counter()
    m2, s2 = modeller.predict(ev.images[:n])
    modeller.refine(ev.images[:n], m2, s2, options=opts)
    out["throughput_network_plus_refinement_per_s"] = round(n / (time.perf_counter() - t0), 2)
    out["throughput_cutouts"] = n
    out["load_after_throughput"] = loadavg()
    torch.set_num_threads(1)
    return out, r.mu


def throughput(modeller: Modeller, images: np.ndarray, *, with_vetting: bool) -> float:
    """Cutouts per second of :meth:`Modeller.predict` (and :func:`vet` per cutout)."""
    modeller.predict(images[:64])  # warm-up
    t0 = time.perf_counter()
    mu, sig = modeller.predict(images)
    if with_vetting:
        for w, m, s in zip(images, mu, sig, strict=True):
            vet(w, m, s)
    return len(images) / (time.perf_counter() - t0)


def vetting_effect(modeller: Modeller, n: int, seed: int) -> dict[str, Any]:
    """Flagged fractions of simulated lenses and impostors (both simulators) and list purity."""
    out: dict[str, Any] = {}
    rules = VetRules()
    for sim in ("default", "independent"):
        make = simulate_lens_set if sim == "default" else independent_lens_set
        lenses = make(n, seed=seed + 7)
        fakes = make(n, seed=seed + 8, kinds=NONLENS)
        flagged = {}
        for label, data in (("lens", lenses), ("impostor", fakes)):
            mu, sig = modeller.predict(data.images)
            flags = [vet(w, m, s, rules=rules).flags for w, m, s in zip(data.images, mu, sig, strict=True)]
            flagged[label] = np.array([bool(f) for f in flags])
            if label == "impostor":
                out[f"{sim}_impostor_flagged_by_kind"] = {
                    k: round(float(flagged[label][data.kinds == k].mean()), 3) for k in NONLENS
                }
            out[f"{sim}_{label}_reasons"] = _reasons(flags)
        kept_l = int((~flagged["lens"]).sum())
        kept_f = int((~flagged["impostor"]).sum())
        out[sim] = {
            "n_lenses": n,
            "n_impostors": n,
            "completeness_after": round(kept_l / n, 3),
            "impostors_removed": round(1 - kept_f / n, 3),
            "purity_before": 0.5,
            "purity_after": round(kept_l / max(kept_l + kept_f, 1), 3),
        }
    return out


def _reasons(flags: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in flags:
        for r in f:
            counts[r] = counts.get(r, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6000, help="training lenses (default simulator)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--n-eval", type=int, default=1000, help="evaluation lenses (independent simulator)")
    ap.add_argument("--n-fit", type=int, default=5, help="cutouts fitted by lenstronomy")
    ap.add_argument("--n-vet", type=int, default=300, help="lenses and impostors per simulator for vetting")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the throughput figures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arc-mag-r", default=None, help="MIN,MAX lensed r magnitude of the training lenses")
    ap.add_argument("--cache", type=Path, default=None, help="npz of the training set (reused when present)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="judge this saved version instead of training")
    ap.add_argument("--refine-steps", type=int, default=6, help="Levenberg-Marquardt iterations (0: no refinement)")
    ap.add_argument("--n-refine-calib", type=int, default=300, help="default-simulator lenses calibrating σ")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res: dict[str, Any] = {"machine": machine_info(with_torch=True), "args": {k: str(v) for k, v in vars(args).items()}}
    calib = simulate_lens_set(args.n_refine_calib, seed=args.seed + 77) if args.n_refine_calib else None
    if args.checkpoint is not None:
        modeller = load_version(args.checkpoint)
        data_targets = calib.targets if calib is not None else np.zeros((1, 9))
        if not np.any(modeller.calibration != 1.0) and calib is not None:
            from lenscat.models.lensmodel import coverage_scale

            m0, s0 = modeller.predict(calib.images)
            modeller.calibration = coverage_scale((calib.targets - m0) / s0)
            res["calibration"] = [round(float(v), 3) for v in modeller.calibration]
            res["calibration_set"] = f"{len(calib)} default-simulator lenses, seed {args.seed + 77}"
    else:
        t0 = time.perf_counter()
        if args.cache is not None and args.cache.exists():
            from lenscat.modelling.training_set import LensSet

            z = np.load(args.cache, allow_pickle=True)
            data = LensSet(
                z["images"], z["targets"], np.array(["lens"] * len(z["images"]), dtype=object), z["fwhm"], z["sky"]
            )
        else:
            arc = tuple(float(v) for v in args.arc_mag_r.split(",")) if args.arc_mag_r else None
            data = simulate_lens_set(args.n, seed=args.seed + 21, arc_mag_r=arc)  # type: ignore[arg-type]
        res["simulate_seconds"] = round(time.perf_counter() - t0, 1)
        opts = LensTrainOptions(n=len(data), epochs=args.epochs, width=args.width, members=args.members, seed=args.seed)
        fit = fit_and_calibrate(data, opts, progress=True)
        res["train_seconds"] = round(fit["seconds"], 1)
        res["calibration"] = [round(float(v), 3) for v in fit["calibration"]]
        modeller = Modeller(
            members_from(fit["state"]),
            Preprocessing.from_dict(fit["preprocessing"]),
            fit["calibration"],
            residual=fit["residual_channels"],
        )
        data_targets = data.targets
    ev = independent_lens_set(args.n_eval, seed=args.seed + 99)
    mu, sig = modeller.predict(ev.images)
    big = ev.targets[:, 0] >= 1.0
    base = baseline_predictions(data_targets, len(ev))
    res["independent_all"] = parameter_metrics(mu, sig, ev.targets)
    res["independent_theta_ge_1"] = parameter_metrics(mu[big], sig[big], ev.targets[big])
    res["baseline_all"] = parameter_metrics(base, np.ones_like(base), ev.targets)
    res["load_before_throughput"] = loadavg()
    torch.set_num_threads(args.threads)
    res["throughput_network_per_s"] = round(throughput(modeller, ev.images, with_vetting=False), 1)
    res["throughput_with_vetting_per_s"] = round(throughput(modeller, ev.images[:300], with_vetting=True), 1)
    torch.set_num_threads(1)
    refined = mu
    if args.refine_steps > 0 and calib is not None:
        res["refinement"], refined = refinement_rows(modeller, calib, ev, mu, sig, args.refine_steps, args.threads)
    fits = []
    for k in range(args.n_fit):
        t1 = time.perf_counter()
        m1, _ = modeller.predict(ev.images[k : k + 1])
        net_s = time.perf_counter() - t1
        f = fit_lenstronomy(ev.images[k], float(ev.psf_fwhm[k, 1]), n_particles=40, n_pso=80, n_mcmc=40, seed=k)
        fits.append(
            {
                "truth_theta_e": round(float(ev.targets[k, 0]), 3),
                "network_theta_e": round(float(m1[0, 0]), 3),
                "refined_theta_e": round(float(refined[k, 0]), 3),
                "lenstronomy_theta_e": round(f["theta_e"], 3),
                "network_seconds": round(net_s, 4),
                "lenstronomy_seconds": round(f["seconds"], 1),
            }
        )
        print(json.dumps(fits[-1]), flush=True)
    if fits:
        res["fits"] = fits
        res["fit_abs_err_network"] = round(
            float(np.mean([abs(f["network_theta_e"] - f["truth_theta_e"]) for f in fits])), 3
        )
        res["fit_abs_err_lenstronomy"] = round(
            float(np.mean([abs(f["lenstronomy_theta_e"] - f["truth_theta_e"]) for f in fits])), 3
        )
        lt = float(np.mean([f["lenstronomy_seconds"] for f in fits]))
        res["speed_ratio_network_vs_lenstronomy"] = round(lt * res["throughput_network_per_s"], 0)
    if args.n_vet:
        res["vetting"] = vetting_effect(modeller, args.n_vet, args.seed)
    res["load_after"] = loadavg()
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
