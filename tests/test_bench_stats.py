"""`mlkd bench`: gains over vanilla paired by seed, their intervals, the table and the plots."""
from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
from scipy import stats as sps
from matplotlib.container import BarContainer
from sklearn.metrics import average_precision_score

import mlkd.bench as bench
from mlkd.cli import main
from mlkd.engine.evaluate import compute_metrics, load_scores
from mlkd.stats import bootstrap_counts
from synthetic import write_fashion_like
from tiny_runs import tiny_flags

matplotlib.use("Agg")

CLASSES = ["a", "b", "c", "d"]


def _map(scores, targets):
    return float(np.mean([average_precision_score(targets[:, j], scores[:, j])
                          for j in range(targets.shape[1]) if targets[:, j].any()]))


def _fake_comparison(seeds, methods=("vanilla", "KD", "L2D (λ_LED = 0.003)"), n=60):
    """Test outputs of invented runs: each method adds its own signal to the targets, each seed its noise."""
    rng = np.random.default_rng(0)
    targets = (rng.random((n, len(CLASSES))) < 0.35).astype(float)
    runs, scores = {}, {}
    for k, label in enumerate(methods):
        runs[label], scores[label] = [], []
        for seed in seeds:
            s = ((0.3 + 0.1 * k) * targets + np.random.default_rng(100 * k + seed).random(targets.shape)) / 2
            runs[label].append(compute_metrics(s, targets, 0.5, CLASSES))
            scores[label].append((s, targets))
    return runs, scores, targets


def test_gains_are_paired_by_seed_with_t_and_bootstrap_intervals():
    seeds = [0, 1, 2]
    runs, scores, targets = _fake_comparison(seeds)
    gains = bench.paired_gains(runs, scores, seeds, "vanilla", resamples=60, bootstrap_seed=5)
    assert gains["reference"] == "vanilla" and list(gains["methods"]) == ["KD", "L2D (λ_LED = 0.003)"]
    counts = bootstrap_counts(len(targets), 60, seed=5)
    for label, g in gains["methods"].items():
        diffs = np.array([runs[label][k]["mAP"] - runs["vanilla"][k]["mAP"] for k in range(3)])
        assert [e["gain"] for e in g["per_seed"]] == pytest.approx(diffs.tolist(), abs=1e-15)
        low, high = sps.t.interval(0.95, 2, loc=diffs.mean(), scale=sps.sem(diffs))
        assert (g["t_interval"]["low"], g["t_interval"]["high"]) == (pytest.approx(low), pytest.approx(high))
        assert (g["ci"]["low"], g["ci"]["high"]) == (g["t_interval"]["low"], g["t_interval"]["high"])
        assert g["significant"] == (low > 0 or high < 0)
        # The bootstrap, recomputed image by image: both runs of a seed scored on the same resamples.
        per_resample = []
        for row in counts:
            idx = np.repeat(np.arange(len(targets)), row)
            per_resample.append([_map(scores[label][k][0][idx], targets[idx])
                                 - _map(scores["vanilla"][k][0][idx], targets[idx]) for k in range(3)])
        per_resample = np.array(per_resample)  # [resamples, seeds]
        for k, entry in enumerate(g["per_seed"]):
            lo, hi = np.quantile(per_resample[:, k], [0.025, 0.975])
            assert (entry["bootstrap"]["low"], entry["bootstrap"]["high"]) == (pytest.approx(lo, abs=1e-6),
                                                                               pytest.approx(hi, abs=1e-6))
        lo, hi = np.quantile(per_resample.mean(axis=1), [0.025, 0.975])
        assert (g["pooled_bootstrap"]["low"], g["pooled_bootstrap"]["high"]) == (pytest.approx(lo, abs=1e-6),
                                                                                 pytest.approx(hi, abs=1e-6))


def test_one_seed_has_no_t_interval_and_uses_the_bootstrap():
    runs, scores, _ = _fake_comparison([4])
    gains = bench.paired_gains(runs, scores, [4], "vanilla", resamples=50)
    for g in gains["methods"].values():
        assert g["t_interval"] is None
        assert (g["ci"]["low"], g["ci"]["high"]) == (g["pooled_bootstrap"]["low"], g["pooled_bootstrap"]["high"])
        assert "bootstrap" in g["ci"]["kind"]
        assert g["significant"] == (g["ci"]["low"] > 0 or g["ci"]["high"] < 0)


def test_no_vanilla_means_no_gains_and_says_why():
    runs, scores, _ = _fake_comparison([0, 1], methods=("KD", "L2D"))
    gains = bench.paired_gains(runs, None, [0, 1], None)
    assert gains["methods"] == {} and "vanilla" in gains["note"]
    result = {**bench.summarise(runs, None), "seeds": [0, 1], "gains": gains}
    table = bench.markdown_table(result)
    assert "No gains reported" in table and "add vanilla" in table and "Δ mAP" not in table


def test_runs_on_different_test_sets_are_refused():
    runs, scores, _ = _fake_comparison([0])
    s, t = scores["KD"][0]
    scores["KD"][0] = (s, 1 - t)
    with pytest.raises(ValueError, match="test targets"):
        bench.paired_gains(runs, scores, [0], "vanilla", resamples=10)


def _result(seeds, **kwargs):
    runs, scores, _ = _fake_comparison(seeds, **kwargs)
    result = bench.summarise(runs, {"mAP": 0.95, "topk_OF1": 0.9})
    result["seeds"] = list(seeds)
    result["student"] = "tiny_cnn"
    result["gains"] = bench.paired_gains(runs, scores, seeds, "vanilla", resamples=50)
    return runs, result


def test_table_with_one_seed_shows_no_fake_spread():
    _, result = _result([0])
    table = bench.markdown_table(result)
    assert "±" not in table.split("\n\n")[0]  # no "± 0.00" of a single value
    assert "one seed (no spread across seeds)" in table and "n/a (1 seed)" in table
    assert result["methods"]["KD"]["mAP"]["std"] is None


def test_table_with_seeds_shows_spread_gains_and_significance():
    _, result = _result([0, 1, 2])
    table = bench.markdown_table(result)
    assert "± " in table and "over 3 seeds" in table and "Gains over vanilla" in table
    for label, g in result["gains"]["methods"].items():
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} | {100 * g['mean']:+.2f}"))
        assert row.endswith("| yes |" if g["significant"] else "| no |")
    assert "| vanilla |" in table or "| **vanilla** |" in table


def _captured_figures(monkeypatch):
    figures = []
    monkeypatch.setattr(bench, "_save_figure", lambda fig, path: figures.append(fig))
    return figures


def _bars(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _error_bars(container):
    """(low, high) ends of each error bar of a bar container."""
    segments = container.errorbar.lines[2][0].get_segments()
    return [(float(seg[0][1]), float(seg[1][1])) for seg in segments]


def test_comparison_plot_starts_at_zero_shows_gain_intervals_and_keeps_its_title(monkeypatch, tmp_path):
    figures = _captured_figures(monkeypatch)
    _, result = _result([0, 1, 2], methods=("vanilla", "L2D (λ_LED = 0.003)"))  # two methods
    bench.plot_comparison(result, tmp_path / "c.png")
    fig = figures[0]
    ax, ax_gain = fig.axes[:2]
    assert ax.get_ylim()[0] == 0
    g = result["gains"]["methods"]["L2D (λ_LED = 0.003)"]
    assert _error_bars(_bars(ax_gain)[0]) == [(pytest.approx(100 * g["ci"]["low"]),
                                               pytest.approx(100 * g["ci"]["high"]))]
    fig.canvas.draw()
    frame = fig.bbox
    for text in (fig._suptitle, ax.title, ax_gain.title):  # every title lies wholly inside the image
        box = text.get_window_extent()
        assert text.get_text() and frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1, text


def test_comparison_plot_without_vanilla_says_so(monkeypatch, tmp_path):
    figures = _captured_figures(monkeypatch)
    runs, _, _ = _fake_comparison([0], methods=("KD", "L2D"))
    result = {**bench.summarise(runs, None), "seeds": [0], "gains": bench.paired_gains(runs, None, [0], None)}
    bench.plot_comparison(result, tmp_path / "c.png")
    texts = " ".join(t.get_text() for t in figures[0].axes[1].texts)
    assert "vanilla" in texts.replace("\n", " ")


def test_ap_gain_plot_shows_the_spread_over_seeds(monkeypatch, tmp_path):
    figures = _captured_figures(monkeypatch)
    runs, _ = _result([0, 1, 2])
    bench.plot_ap_gain(runs, tmp_path / "g.png")
    ax = figures[0].axes[0]
    for container, label in zip(_bars(ax), ["KD", "L2D (λ_LED = 0.003)"]):
        diffs = 100 * np.array([[runs[label][k]["AP_per_label"][c] - runs["vanilla"][k]["AP_per_label"][c]
                                 for c in CLASSES] for k in range(3)])
        mean, std = diffs.mean(axis=0), diffs.std(axis=0, ddof=1)
        got = _error_bars(container)
        assert [lo for lo, _ in got] == pytest.approx((mean - std).tolist())
        assert [hi for _, hi in got] == pytest.approx((mean + std).tolist())
    figures[0].canvas.draw()
    box, frame = ax.title.get_window_extent(), figures[0].bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fashion_like(tmp_path_factory.mktemp("fashion_bench"), n_train=160, n_test=60)


def _cli(root, output, epochs=1):
    return tiny_flags(root, output, mosaics=96, epochs=epochs, batch=8)


def test_bench_reports_paired_gains_from_the_saved_test_scores(data_root, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    assert main(["train", *_cli(data_root, teacher, epochs=2)]) == 0
    out = tmp_path / "bench"
    assert main(["bench", "--teacher", str(teacher / "best.pt"), "--methods", "vanilla,kd", "--seeds", "0,1",
                 *_cli(data_root, out)]) == 0
    printed = capsys.readouterr().out
    assert "Gains over vanilla" in printed
    result = json.loads((out / "comparison.json").read_text())
    for label in ("vanilla", "kd"):
        for seed in (0, 1):
            run = out / label / f"seed{seed}"
            scores, targets = load_scores(run / "test_scores.npz")
            # The saved per-image scores are those of the reported metrics (the best.pt on the test split).
            assert _map(scores, targets) == pytest.approx(json.loads((run / "metrics.json").read_text())["mAP"],
                                                          abs=1e-12)
    g = result["gains"]["methods"]["kd"]
    values = result["methods"]
    assert [e["gain"] for e in g["per_seed"]] == pytest.approx(
        [k - v for k, v in zip(values["kd"]["mAP"]["values"], values["vanilla"]["mAP"]["values"])], abs=1e-15)
    assert g["ci"]["kind"] == "t over 2 seeds"
    assert (out / "comparison_map.png").stat().st_size > 0 and (out / "ap_gain_per_label.png").stat().st_size > 0
