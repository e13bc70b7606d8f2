"""Types of the active-learning domain: a campaign (:class:`Campaign`) and one of its loops (:class:`Loop`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from lenscat.errors import LenscatError


class CampaignExhausted(LenscatError):
    """Every embedded source of the campaign has been inspected, labelled or proposed."""


@dataclass(frozen=True)
class Campaign:
    """One row of ``lenscat.al_campaigns``."""

    campaign_id: int
    name: str
    encoder_id: int
    encoder: str
    strategy: str
    batch_size: int
    settings: dict[str, Any]
    created_at: dt.datetime

    @property
    def classifier_name(self) -> str:
        """Name its classifier versions are registered under: ``al-<name>``."""
        return f"al-{self.name}"


@dataclass(frozen=True)
class Loop:
    """One row of ``lenscat.al_loops``, with its inspection counts.

    ``batch`` holds the proposed source ids in proposal order and ``scores`` their scores under the
    loop's model (None for a random batch). ``completed`` is True once every batch source has a
    grade (a skip counts as inspected); ``n_inspected`` counts those, ``n_graded`` the ones with a
    non-skip grade, ``n_found`` the ones whose human label is a lens.
    """

    loop_id: int
    loop_no: int
    campaign: str
    campaign_id: int
    batch: list[int]
    scores: list[float] | None
    model: str | None
    model_id: int | None
    n_positive: int
    n_negative: int
    labels_sha256: str | None
    n_inspected: int
    n_graded: int
    n_found: int
    completed: bool
    created_at: dt.datetime
    completed_at: dt.datetime | None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def random(self) -> bool:
        """True when the batch was drawn at random (no lens label to train on yet)."""
        return self.model_id is None

    @property
    def sample(self) -> str:
        """The ``sample`` to record with the grades of this batch: ``loop:<campaign>/<loop_no>``."""
        return loop_sample(self)


def loop_sample(loop: Loop) -> str:
    """The ``grades.sample`` text of a loop's grades: ``loop:<campaign>/<loop_no>``."""
    return f"loop:{loop.campaign}/{loop.loop_no}"
