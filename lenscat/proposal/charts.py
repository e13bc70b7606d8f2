"""Finding charts: the colour cutout North up, East left, with a scale bar, a compass, the target's name
and coordinates, and the lens model's critical curve (lenstronomy SIE + SHEAR) when there is one.

The axes are sky offsets from the catalogue position in arcsec: ``x`` grows towards the East (to the
left, the axis is inverted) and ``y`` towards the North (up), the frame of ``lenscat.lens_models``
(``x`` = delta RA cos dec, position angles from East towards North), so the critical curve that
lenstronomy computes in that frame is drawn as it is. Stein/Legacy cutouts are stored with row 0 at
the South and column 0 at the East; the image is drawn with ``origin='lower'`` and an extent running
from +x (East) on the left to -x on the right.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lenscat.modelling.types import LensModel

FIG_INCHES = (6.0, 6.6)
DPI = 100


def critical_curves(model: LensModel, half_width_arcsec: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Critical curves of the model's SIE + external shear: (x East, y North) arcsec arrays per curve."""
    from lenstronomy.LensModel.lens_model import LensModel as LenstronomyModel
    from lenstronomy.LensModel.lens_model_extensions import LensModelExtensions

    kwargs = [
        {
            "theta_E": float(model.theta_e),
            "e1": float(model.e1),
            "e2": float(model.e2),
            "center_x": float(model.center_x),
            "center_y": float(model.center_y),
        },
        {"gamma1": float(model.gamma1), "gamma2": float(model.gamma2), "ra_0": 0.0, "dec_0": 0.0},
    ]
    ext = LensModelExtensions(LenstronomyModel(["SIE", "SHEAR"]))
    window = float(min(2 * half_width_arcsec, max(6.0 * model.theta_e, 2.0)))
    ra_c, dec_c, _, _ = ext.critical_curve_caustics(
        kwargs,
        compute_window=window,
        grid_scale=max(window / 200.0, 0.005),
        center_x=float(model.center_x),
        center_y=float(model.center_y),
    )
    return [(np.asarray(x), np.asarray(y)) for x, y in zip(ra_c, dec_c, strict=True) if len(x) > 2]


def _nice_length(field_arcsec: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 20, 30, 60):
        if step >= field_arcsec / 6:
            return float(step)
    return 60.0


def chart_figure(
    rgb: np.ndarray | None,
    pixel_scale_arcsec: float,
    *,
    title: str,
    subtitle: str = "",
    model: LensModel | None = None,
    field_arcsec: float | None = None,
) -> Any:
    """A matplotlib Figure (Agg, no pyplot) of one finding chart.

    Parameters
    ----------
    rgb
        (H, W, 3) uint8 colour image with row 0 at the South and column 0 at the East (as stored);
        None draws an empty field.
    pixel_scale_arcsec
        Pixel size [arcsec].
    title, subtitle
        Name and coordinates; a second line (priority, evidence, model).
    model
        Lens model whose critical curve is drawn (in the sky frame of the module docstring).
    field_arcsec
        Field of view without an image [arcsec] (default 20).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_INCHES, dpi=DPI)
    ax = fig.add_axes((0.08, 0.06, 0.86, 0.8))
    if rgb is not None:
        h, w = rgb.shape[:2]
        half_x, half_y = w * pixel_scale_arcsec / 2, h * pixel_scale_arcsec / 2
        ax.imshow(rgb, origin="lower", extent=(half_x, -half_x, -half_y, half_y), interpolation="nearest")
    else:
        half_x = half_y = (field_arcsec or 20.0) / 2
        ax.set_facecolor("black")
    ax.set_xlim(half_x, -half_x)  # East to the left
    ax.set_ylim(-half_y, half_y)
    ax.set_xlabel("East offset [arcsec]")
    ax.set_ylabel("North offset [arcsec]", labelpad=1)
    ax.tick_params(labelsize=7)
    if model is not None:
        for k, (x, y) in enumerate(critical_curves(model, min(half_x, half_y))):
            ax.plot(x, y, color="#00e5ff", lw=1.2, label="critical curve" if k == 0 else None)
        ax.plot([model.center_x], [model.center_y], "+", color="#00e5ff", ms=8)
        ax.legend(loc="upper left", fontsize=7, frameon=False, labelcolor="white")
    # scale bar, bottom left
    length = _nice_length(2 * half_x)
    x0, y0 = half_x * 0.9, -half_y * 0.85
    ax.plot([x0, x0 - length], [y0, y0], color="white", lw=2.5, solid_capstyle="butt")
    ax.text(x0 - length / 2, y0 + half_y * 0.04, f'{length:g}"', color="white", ha="center", va="bottom", fontsize=9)
    # compass, bottom right: N up, E left
    arm = half_x * 0.22
    cx, cy = -half_x * 0.8, -half_y * 0.8
    style = {"arrowstyle": "-|>", "color": "white", "lw": 1.5}
    ax.annotate("", xy=(cx, cy + arm), xytext=(cx, cy), arrowprops=style)
    ax.annotate("", xy=(cx + arm, cy), xytext=(cx, cy), arrowprops=style)
    ax.text(cx, cy + arm * 1.15, "N", color="white", ha="center", va="bottom", fontsize=10, gid="compass-N")
    ax.text(cx + arm * 1.15, cy, "E", color="white", ha="right", va="center", fontsize=10, gid="compass-E")
    fig.text(0.08, 0.955, title, fontsize=11, weight="bold", va="center")
    if subtitle:
        fig.text(0.08, 0.905, subtitle, fontsize=8, va="center")
    return fig


def save_chart(fig: Any, png: Path | None = None, pdf: Path | None = None) -> None:
    """Write a chart figure as PNG and/or PDF (Agg backends, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    if png is not None:
        fig.savefig(png, format="png", dpi=DPI)
    if pdf is not None:
        fig.savefig(pdf, format="pdf")


def save_chart_to(fig: Any, out: Any, fmt: str) -> None:
    """Write a chart figure to a binary file object in ``fmt`` ('png' or 'pdf')."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(out, format=fmt, dpi=DPI)


def field_of(rgb: np.ndarray | None, pixel_scale_arcsec: float) -> float:
    """Field of view of an image [arcsec] (its larger side)."""
    if rgb is None:
        return math.nan
    return float(max(rgb.shape[:2]) * pixel_scale_arcsec)
