"""The report's plots: configs that did not learn are hollow grey, labelled with their verdict, and never on the
Pareto front; memory rows get no loss axis."""
import matplotlib
import matplotlib.pyplot as plt

from harness.aggregate import load_rows, tidy
from harness.plots import NOT_LEARNED, _quality_panel, pareto
from harness.results import append_row
from tests.test_aggregate import _row, quality_rows

matplotlib.use("Agg")


def _table(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    for row in rows:
        append_row(path, row)
    return tidy(load_rows([path]))


def test_a_config_that_did_not_learn_is_hollow_grey_and_off_the_front(tmp_path):
    """fira (2 learned seeds, 1 diverged) is made the lowest-memory config at a low loss: it would dominate the front
    if it were drawn as a trade-off."""
    rows = [{**r, "peak_allocated": 700 * 2**20} if r["method"] == "fira" else r for r in quality_rows()]
    table = _table(tmp_path, rows)
    fig, ax = plt.subplots()
    _quality_panel(ax, table, "peak_allocated", 2**20, minimize_x=True)
    handles, labels = ax.get_legend_handles_labels()
    front = next(line for line in ax.get_lines() if line.get_label() == "Pareto front (learned configs)")
    assert list(front.get_xdata()) == [1300, 1400, 1500]  # apollo, adamw8bit, adamw: not fira at 700
    styles = dict(zip(labels, handles, strict=True))
    fira = styles["fira: mixed: 2 learned, 1 diverged"][0]
    assert fira.get_markerfacecolor() == "none" and fira.get_markeredgecolor() == NOT_LEARNED
    assert styles["adamw [best]"][0].get_markerfacecolor() != "none"
    assert "galore_hi_lr: diverged (eval 27.6, off the axis)" in labels
    assert max(ax.get_ylim()) < 4  # the diverged losses do not squeeze the learned configs into a line
    markers = [styles[label][0].get_marker() for label in labels if label in styles and "front" not in label]
    assert len(set(markers)) == len(markers)  # eight configs, eight markers: the legend tells each apart
    plt.close(fig)


def test_memory_rows_draw_no_loss_axis(tmp_path):
    table = _table(tmp_path, [_row("a", "adamw", 0, 100, 6.4, 10.0), _row("b", "sgd", 0, 60, 3.0, 5.0)])
    assert pareto(table, tmp_path) == [] and not list(tmp_path.glob("*.png"))


def test_each_panel_is_one_model_and_budget_with_its_gpu_budget_and_seeds_in_the_title(tmp_path, monkeypatch):
    rows = quality_rows() + [{**r, "run_id": r["run_id"] + "b", "budget_tokens": 4_000_000, "budget_steps": 1953,
                              "budget_epochs": 0.08} for r in quality_rows()]
    table = _table(tmp_path, rows)
    assert len(table) == 16  # each method at two budgets
    titles = {}
    real = plt.Figure.savefig

    def keep(fig, path, **kwargs):
        titles[str(path)] = [ax.get_title() for ax in fig.axes]
        return real(fig, path, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", keep)
    written = pareto(table, tmp_path)
    assert titles[str(written[0])] == [
        "llama_60m on c4 (pretrain), h100\nbudget 2M tokens, 976 steps, 0.04 epochs; 2-3 seeds per config",
        "llama_60m on c4 (pretrain), h100\nbudget 4M tokens, 1953 steps, 0.08 epochs; 2-3 seeds per config"]
