"""The seed of a science check: fixed by default, another one or a random one behind an option."""

from __future__ import annotations

import os
import secrets

ENV = "LENSCAT_SCIENCE_SEED"


def science_seed(default: int) -> int:
    """Return the seed a science check simulates its surveys with, and print it.

    Parameters
    ----------
    default : int
        The check's fixed seed: the one its figures in docs/benchmarks.md were measured with.

    Returns
    -------
    int
        ``default`` unless ``LENSCAT_SCIENCE_SEED`` is set: to an integer (that seed) or to
        ``random`` (a new seed in ``[0, 2**31)``, printed so that a failure can be reproduced).

    Raises
    ------
    ValueError
        If ``LENSCAT_SCIENCE_SEED`` is neither empty, ``random`` nor a non-negative integer.
    """
    value = os.environ.get(ENV, "").strip()
    if not value:
        seed = default
    elif value.lower() == "random":
        seed = secrets.randbelow(2**31)
    else:
        try:
            seed = int(value)
        except ValueError:
            raise ValueError(f"{ENV} must be an integer or 'random', not {value!r}") from None
        if seed < 0:
            raise ValueError(f"{ENV} must be non-negative, not {seed}")
    print(f"science check seed: {seed} ({ENV}={value or '<unset>'}; the default is {default})")
    return seed
