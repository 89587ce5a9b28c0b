"""Tests for kronsearch.report.plot: which PNGs are written, what they contain, and when a plot is skipped."""

from __future__ import annotations

import matplotlib.image
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from kronsearch.layers.errors import BadInput
from kronsearch.report import plot as kplot
from kronsearch.report.plot import pareto_front, plot_prefix, plot_selection, plot_studies
from kronsearch.storage import load_studies
from tests.test_report import build_hybrid, build_search


@pytest.fixture
def studies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_search(tmp_path, weights=False)
    return load_studies("demo")


def assert_png(path, min_width=400):
    image = matplotlib.image.imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[1] >= min_width and image.std() > 0.05  # a drawn figure, not a blank canvas


def test_plot_studies_writes_four_pngs(studies, tmp_path):
    result = plot_studies(studies, tmp_path / "plots")
    assert [p.name for p in result.paths] == ["demo-history.png", "demo-pareto.png", "demo-cost.png",
                                              "demo-selection.png"]
    assert result.notes == []
    for path in result.paths:
        assert_png(path)


def test_plotting_a_search_or_one_of_its_studies_writes_the_same_file_names(studies):
    assert plot_prefix(studies) == plot_prefix(studies[:1]) == plot_prefix(studies[1:]) == "demo"


def test_selection_is_skipped_without_a_one_round_trial(studies, tmp_path):
    result = plot_studies(studies[1:], tmp_path)
    assert [p.name for p in result.paths] == ["demo-history.png", "demo-pareto.png", "demo-cost.png"]
    assert result.notes == ["skipped selection plot: no one_round trial with race estimates or candidate norms in "
                            "demo:per_pattern"]


def test_selection_draws_one_subplot_per_layer_from_the_best_one_round_trial(studies, tmp_path, monkeypatch):
    drawn = {}
    real_save = kplot._save

    def spy(fig, path):
        visible = [ax for ax in fig.axes if ax.get_visible()]
        drawn["titles"] = [ax.get_title() for ax in visible]
        drawn["lines"] = {ax.get_title(): {line.get_label(): (list(line.get_xdata()), line.get_linewidth())
                                           for line in ax.get_lines()} for ax in visible}
        drawn["suptitle"] = fig.get_suptitle()
        return real_save(fig, path)

    monkeypatch.setattr(kplot, "_save", spy)
    assert plot_selection(studies, tmp_path / "sel.png") == tmp_path / "sel.png"
    assert drawn["titles"] == ["layers.0", "head"]
    assert "demo:one_round trial 1: rank=2" in drawn["suptitle"]  # the best one-round trial (val .85)
    layer0 = drawn["lines"]["layers.0"]
    assert set(layer0) == {"2x2 (selected)", "4x4", "8x8"}
    assert layer0["2x2 (selected)"][0] == [1, 2, 3]  # the fine-tune epoch has no candidates and is left out
    assert layer0["2x2 (selected)"][1] > layer0["4x4"][1]
    assert set(drawn["lines"]["head"]) == {"2x2 (selected)", "2x4"}


def test_hybrid_study_plots_selection_from_its_one_round_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_hybrid(tmp_path)
    result = plot_studies(load_studies("hyb"), tmp_path)
    # the hybrid fixture's one-round trial recorded no history: the plot is skipped, with a note
    assert [p.name for p in result.paths] == ["hyb-history.png", "hyb-pareto.png", "hyb-cost.png"]
    assert len(result.notes) == 1 and "selection" in result.notes[0]


def test_nothing_complete_means_no_plots(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'e.db'}", study_name="e:one_round")
    study.add_trial(create_trial(state=TrialState.FAIL))
    result = plot_studies([study], tmp_path / "out")
    assert result.paths == [] and len(result.notes) == 4
    assert not (tmp_path / "out").exists()


def drawn_figure(monkeypatch) -> dict:
    """Catch the figure kplot._save is handed (drawn, so legends and axes have their final places)."""
    caught = {}
    real_save = kplot._save

    def spy(fig, path):
        caught["figure"] = fig
        return real_save(fig, path)

    monkeypatch.setattr(kplot, "_save", spy)
    return caught


@pytest.mark.parametrize("draw", [kplot.plot_pareto, kplot.plot_history, kplot.plot_cost])
def test_legends_cover_no_point(studies, tmp_path, monkeypatch, draw):
    caught = drawn_figure(monkeypatch)
    draw(studies, tmp_path / "p.png")
    fig = caught["figure"]
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_cost_plot_draws_best_accuracy_against_cumulative_macs_and_time(studies, tmp_path, monkeypatch):
    caught = drawn_figure(monkeypatch)
    kplot.plot_cost(studies, tmp_path / "c.png")
    macs_ax, time_ax = caught["figure"].axes
    one_round = macs_ax.get_lines()[0]
    assert list(one_round.get_xdata()) == [5 * 10**6, 10**7, 10**7, 10**7]
    assert list(one_round.get_ydata()) == [0.80, 0.85, 0.85, 0.85]
    assert [line.get_label() for line in time_ax.get_lines()] == ["demo:one_round", "demo:per_pattern"]


@pytest.mark.parametrize("points, front", [
    ([(800, 0.83), (1200, 0.86), (1500, 0.84), (800, 0.82)], [0, 1]),
    ([(1, 0.5)], [0]),
    ([(2, 0.9), (1, 0.9)], [1]),  # same accuracy for less compute wins
    ([(1, 0.5), (1, 0.5)], [0, 1]),  # identical points (a reused duplicate) are both on the front
])
def test_pareto_front(points, front):
    assert pareto_front(points) == front


def test_plot_trial_draws_the_selection_of_the_trial_asked_for_and_refuses_others(studies, tmp_path, monkeypatch):
    titles, real_save = [], kplot._save

    def spy(fig, path):
        titles.append(fig.get_suptitle())
        return real_save(fig, path)

    monkeypatch.setattr(kplot, "_save", spy)
    (one_round,) = [s for s in studies if s.study_name == "demo:one_round"]
    assert plot_selection([one_round], tmp_path / "sel.png", trial=0) == tmp_path / "sel.png"
    assert "demo:one_round trial 0: rank=1" in titles[-1]  # not the best trial (#1)
    with pytest.raises(BadInput, match="is a per_pattern trial; only one_round trials race candidates"):
        plot_studies([s for s in studies if s.study_name == "demo:per_pattern"], tmp_path / "none", trial=0)
    with pytest.raises(BadInput, match="has no trial 9"):
        plot_studies([one_round], tmp_path / "none", trial=9)
    with pytest.raises(BadInput, match="--trial needs one study; 2 given"):
        plot_studies(studies, tmp_path / "none", trial=0)
    assert not (tmp_path / "none").exists()  # refused before any file is written


def test_history_marks_pruned_trials_per_study_and_kind_with_one_legend_entry_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_hybrid(tmp_path)
    (study,) = load_studies("hyb")
    for kind, dists, params in (("one_round", {"rank": optuna.distributions.IntDistribution(1, 2)}, {"rank": 1}),
                                ("per_pattern", {"rank": optuna.distributions.IntDistribution(1, 2)}, {"rank": 2})):
        study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=dists,
                                     intermediate_values={0: 0.5}, user_attrs={"kind": kind}))
    caught = drawn_figure(monkeypatch)
    kplot.plot_history([study], tmp_path / "h.png")
    ax = caught["figure"].axes[0]
    labels = [c.get_label() for c in ax.collections if "pruned" in c.get_label()]
    assert labels == ["hyb:hybrid (one_round) pruned (last epoch)", "hyb:hybrid (per_pattern) pruned (last epoch)"]
    markers = {c.get_label(): c.get_paths()[0].vertices.tobytes() for c in ax.collections if "pruned" in c.get_label()}
    assert len(set(markers.values())) == 2
