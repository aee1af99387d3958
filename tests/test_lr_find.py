"""The learning-rate range test: its suggestion on curves whose answer is known, end to end on
a tiny dataset, and `--lr auto` (a run that equals one given the rate it found)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipetrace.lr_find import RangeTest, find_lr, smooth, suggest_lr
from pipetrace.report.build import run_block
from pipetrace.shapes import ShapesConfig, render
from pipetrace.train import TrainConfig, fit

LRS = np.geomspace(1e-6, 10, 100)


def planted(fall: float, blow: float, *, noise: float = 0.0, seed: int = 0):
    """A range-test curve over LRS: the loss falls around 10**fall (the steepest point)
    and explodes from around 10**blow; returns (losses, the noiseless truth on a fine grid)."""
    def loss(x):
        return 2.3 - 1.6 / (1 + np.exp(-3 * (x - fall))) + np.exp(4 * (x - blow))

    fine = np.linspace(-6, 1, 20001)
    truth = loss(fine)
    low = int(np.argmin(truth))
    gone = low + int(np.argmax(truth[low:] > min(4 * truth[low], truth[0])))
    answers = {"minimum": 10 ** fine[low], "steepest": 10 ** fall, "divergence": 10 ** fine[gone]}
    rng = np.random.default_rng(seed)
    return loss(np.log10(LRS)) + rng.normal(0, noise, len(LRS)), answers


def within(x: float, y: float, decades: float = 0.25) -> bool:
    return abs(math.log10(x) - math.log10(y)) <= decades


@pytest.mark.parametrize("fall, blow", [(-4, -1), (-3, 0.0), (-2, 0.5), (-5, -2.5)])
@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_suggestion_on_planted_curves_finds_the_known_landmarks(fall, blow, noise):
    losses, known = planted(fall, blow, noise=noise, seed=int(-10 * fall))
    s = suggest_lr(LRS, losses)
    assert within(s.divergence, known["divergence"], 0.1), (s.divergence, known)
    assert within(s.minimum, known["minimum"], 0.5), (s.minimum, known)  # a flat valley's
    assert within(s.steepest, known["steepest"], 0.4), (s.steepest, known)  # bottom wanders
    assert s.lr == pytest.approx(s.divergence / 10)
    assert s.rule == "a tenth of the divergence point"
    for landmark in (s.steepest, s.minimum, s.divergence, s.lr):  # the reason quotes them
        assert f"{landmark:.1e}" in s.reason
    assert s.steepest < s.minimum < s.divergence


def test_a_bad_batch_in_the_valley_does_not_move_the_suggestion():
    losses, _ = planted(-3, 0.0, noise=0.02)
    spiked = losses.copy()
    spiked[70] = 9.0  # one batch of garbage near the minimum
    assert suggest_lr(LRS, spiked).lr == pytest.approx(suggest_lr(LRS, losses).lr, rel=0.25)


def test_a_one_sided_average_would_move_the_minimum_ours_does_not():
    """fastai's 0.98 moving average trails by ~49 steps; the centred median does not."""
    losses, known = planted(-3, 0.0)
    avg, ema = 0.0, []
    for i, v in enumerate(losses):
        avg = 0.98 * avg + 0.02 * v
        ema.append(avg / (1 - 0.98 ** (i + 1)))
    assert not within(LRS[int(np.argmin(ema))], known["minimum"])
    assert within(LRS[int(np.argmin(smooth(losses, 9)))], known["minimum"])


def test_a_curve_that_never_falls_says_so():
    flat = 2.3 + np.random.default_rng(1).normal(0, 0.01, len(LRS))
    s = suggest_lr(LRS, flat)
    assert s.rule.startswith("the loss never fell") and "never fell below its start" in s.reason


def test_a_curve_without_divergence_and_one_ending_in_nan():
    losses, _ = planted(-3, 5.0)  # explodes far beyond the range
    s = suggest_lr(LRS, losses)
    assert s.divergence is None and "is still near its lowest at 1.0e+01" in s.reason
    assert s.rule == "a tenth of the rate at the lowest loss (no divergence in the range)"
    assert s.lr == pytest.approx(s.minimum / 10)
    assert "A higher end_lr would show where the loss turns" in s.reason
    exploding, _ = planted(-3, -1.0)
    cut = exploding.copy()
    cut[80:] = math.nan
    s = suggest_lr(LRS, cut)
    assert len(s.smoothed) == 80 and s.divergence is not None


def test_the_suggestion_moves_with_the_curve():
    """A mutation of the curve changes what is said: one decade later, one decade higher."""
    a = suggest_lr(LRS, planted(-4, -1)[0])
    b = suggest_lr(LRS, planted(-3, 0)[0])
    assert 0.75 <= math.log10(b.lr / a.lr) <= 1.25 and a.reason != b.reason


# -- end to end ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return render(ShapesConfig(train_per_class=24, val_per_class=4, image_size=64, seed=2),
                  tmp_path_factory.mktemp("shapes"))


def tiny(data, out, **kw) -> TrainConfig:
    from test_train import config

    return config(data, out, **{"amp": "off", "trace_every": 0, **kw})


def test_lr_find_holds_the_runs_settings_fixed(shapes, tmp_path):
    result = find_lr(tiny(shapes, tmp_path, optimizer="sgd", momentum=0.8, weight_decay=1e-3,
                          lr=0.1), RangeTest(start_lr=1e-4, end_lr=100, steps=40))
    assert result.held["optimizer"] == "sgd" and result.held["momentum"] == 0.8
    assert result.held["batch_size"] == 16 and result.held["weight_decay"] == 1e-3
    assert list(result.lrs) == sorted(result.lrs) and result.lrs[0] == pytest.approx(1e-4)
    assert len(result.losses) == len(result.lrs) <= 40
    assert result.lrs[0] <= result.lr <= result.lrs[-1]


def test_lr_auto_trains_as_a_run_given_that_rate(shapes, tmp_path):
    auto = fit(tiny(shapes, tmp_path / "auto", lr_find=True))
    chosen = auto.lr_find.lr
    assert auto.config.lr == chosen and auto.config.lr_find
    given = fit(tiny(shapes, tmp_path / "given", lr=chosen))
    strip = lambda rs: [(r.train_loss, r.val_loss, r.val_acc) for r in rs]  # noqa: E731
    assert strip(auto.records) == strip(given.records)  # the test left the run untouched
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert saved["lr"] == chosen and saved["lr_find"] is True
    from test_weights import documented_keys

    block = run_block(auto)["lr_find"]  # as trace.json holds it, and as documented
    assert set(block) == documented_keys("run.lr_find") and block["suggested"]["lr"] == chosen
    assert run_block(given)["lr_find"] is None


def test_lr_find_command_writes_plot_and_record(shapes, tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    out = tmp_path / "lr"
    proc = run_cli("lr-find", str(shapes), "--model", "pipenet-tiny", "--image-size", "64",
                   "--crop-pct", "1.0", "--batch-size", "16", "--steps", "30", "--start-lr",
                   "1e-5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lr = record["suggested"]["lr"]
    text = " ".join(proc.stdout.split())
    assert f"Suggested learning rate: {lr:.2e} ({record['suggested']['rule']})" in text
    assert record["suggested"]["reason"].split(";")[0] in text
    assert "learning rate (log scale); | suggestion" in proc.stdout and "┤" in proc.stdout
    # a second test never replaces the first: --out is refused, the default goes to lr-find2
    from pipetrace.cli import main

    before = (out / "lr_find.json").read_bytes()
    quick = [str(shapes), "--model", "pipenet-tiny", "--image-size", "64", "--steps", "3"]
    assert main(["lr-find", *quick, "--out", str(out)]) == 2
    assert "already holds a range test" in capsys.readouterr().err
    assert (out / "lr_find.json").read_bytes() == before
    monkeypatch.chdir(tmp_path)
    for n in ("lr-find", "lr-find2"):
        assert main(["lr-find", *quick]) == 0, capsys.readouterr().err
        assert (tmp_path / "runs" / n / "lr_find.json").is_file()
