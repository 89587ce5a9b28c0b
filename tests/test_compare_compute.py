"""compare's training compute: every study's own sums and per_pattern / one_round ratio, and, with several
studies, their pooled sums labelled as pooled."""

from __future__ import annotations

from functools import partial

import pytest
from optuna.trial import create_trial

from kronsearch.report import compare_data, render_compare
from kronsearch.storage import load_studies
from tests.test_report import PER_PATTERN_DISTS, build_hybrid, build_search, metrics_for, plan_for, render, trial_attrs

# build_hybrid: one one_round trial (3M training MACs, 30 s) and two per_pattern trials (4M, 50 s each)


@pytest.fixture
def two_hybrids(tmp_path, monkeypatch):
    """hyb:hybrid as built, and hyb2:hybrid with a third per_pattern trial of 10M MACs and 100 s."""
    monkeypatch.chdir(tmp_path)
    build_hybrid(tmp_path)
    build_hybrid(tmp_path, "hyb2")
    (first,), (second,) = load_studies("hyb"), load_studies("hyb2")
    second.add_trial(create_trial(
        value=0.82, params={"block": "4x4", "rank": 2, "lambda2": 1e-4}, distributions=PER_PATTERN_DISTS,
        user_attrs=trial_attrs("per_pattern", tmp_path, 3, metrics_for(0.82, plan_for("4x4", 2), wall=100.0,
                                                                      macs_total=10**7))))
    return first, second


def test_one_studys_ratio_equals_its_own_sums(two_hybrids):
    first, _ = two_hybrids
    compute = compare_data([first])["compute"]
    assert compute["pooled"] is False
    assert compute["ratio"]["train_macs_total"] == pytest.approx(8 / 3)
    assert compute["ratio"]["wall_time"] == pytest.approx(100 / 30)
    assert compute["by_study"]["hyb:hybrid"]["ratio"] == compute["ratio"]


def test_with_two_studies_each_studys_ratio_equals_its_own_sums(two_hybrids):
    compute = compare_data(list(two_hybrids))["compute"]
    first, second = compute["by_study"]["hyb:hybrid"], compute["by_study"]["hyb2:hybrid"]
    assert first["ratio"]["train_macs_total"] == pytest.approx(8 / 3)
    assert second["ratio"]["train_macs_total"] == pytest.approx(18 / 3)
    assert second["per_pattern"]["train_macs_total"] == 18 * 10**6 and second["one_round"]["trials"] == 1


def test_with_two_studies_the_top_level_sums_are_pooled_and_say_so(two_hybrids):
    data = compare_data(list(two_hybrids))
    compute = data["compute"]
    assert compute["pooled"] is True
    assert compute["ratio"]["train_macs_total"] == pytest.approx(26 / 6)
    assert any("the pooled ratio sums the one_round trials of 2 studies (hyb2:hybrid, hyb:hybrid)" in n
               for n in data["notes"])


def test_the_compute_table_shows_each_studys_ratio_and_the_pooled_one_labelled(two_hybrids):
    text = render(partial(render_compare, wide=True), compare_data(list(two_hybrids)))
    lines = text.splitlines()
    ratios = [line for line in lines if "per_pattern / one_round" in line]
    assert len(ratios) == 3 and "2.67x" in ratios[0] and "6.00x" in ratios[1] and "4.33x" in ratios[2]
    assert any("pooled over 2 studies" in line for line in lines)


def test_a_study_of_one_kind_has_no_ratio_of_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_search(tmp_path)
    compute = compare_data(load_studies("demo"))["compute"]
    assert compute["by_study"]["demo:one_round"]["ratio"] == {"wall_time": None, "train_macs_total": None}
    assert compute["ratio"]["train_macs_total"] == pytest.approx(0.4)  # one_round vs per_pattern: pooled
