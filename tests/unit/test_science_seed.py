"""The science checks' seed: fixed by default, an integer or ``random`` behind LENSCAT_SCIENCE_SEED."""

from __future__ import annotations

import pytest

from tests.integration.science_seed import ENV, science_seed


def test_default_is_the_fixed_seed(monkeypatch, capsys):
    monkeypatch.delenv(ENV, raising=False)
    assert science_seed(680959940) == 680959940
    assert science_seed(777) == 777
    assert "science check seed: 777" in capsys.readouterr().out


def test_an_integer_overrides_the_default(monkeypatch, capsys):
    monkeypatch.setenv(ENV, " 2026 ")
    assert science_seed(777) == 2026
    assert "science check seed: 2026" in capsys.readouterr().out


def test_random_draws_a_new_seed_and_prints_it(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "random")
    seeds = {science_seed(777) for _ in range(5)}
    assert all(0 <= s < 2**31 for s in seeds)
    assert len(seeds) > 1  # five draws from 2**31 values colliding is a ~1e-8 event
    printed = capsys.readouterr().out
    assert all(f"science check seed: {s}" in printed for s in seeds)


@pytest.mark.parametrize("value", ["abc", "-3", "1.5"])
def test_anything_else_is_refused(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        science_seed(777)
