"""What a fit reports as it trains: the verbose table, the progress bar, the history's keys
(what each is measured on), the validation figures as predict gives them, and the checks that
come before any training (device) or after it (ConvergenceWarning)."""

import importlib
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import torch_objective
from sklearn.exceptions import ConvergenceWarning

from skfair import FairNeuralClassifier, FairNeuralRegressor, _kernels, _training
from skfair.constraints import constraint_gap
from skfair.layer import project

FAST = dict(hidden_layer_sizes=(16,), max_epochs=4, batch_size=128, learning_rate=0.01,
            random_state=0)
PROTECTED = ["sex", "race"]
ALL_COLUMNS = ["epoch", "train_loss", "train_penalty", "train_gap", "train_fair_gap",
               "val_loss", "val_gap[exact]", "seconds"]


def table(text):
    """``(headings, rows)`` of a printed table: its header line (checked to be followed by its
    rule), and every row's cells."""
    lines = text.strip("\n").splitlines()
    assert set(lines[1].replace(" ", "")) == {"-"}
    return lines[0].split(), [line.split() for line in lines[2:]]


def test_verbose_table_has_a_header_then_a_row_per_epoch(biased, capsys):
    """verbose=1: the header once, then one aligned row per epoch whose cells are the
    history's values; ``*`` marks the epochs whose validation loss improved by at least tol
    (recomputed here from the history)."""
    X, y = biased
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, verbose=1, early_stopping=True,
                               **dict(FAST, max_epochs=8)).fit(X, y)
    out = capsys.readouterr().out
    headings, rows = table(out)
    assert headings == ALL_COLUMNS
    assert len(rows) == clf.n_iter_ == len(clf.history_)
    assert len({len(line) for line in out.strip("\n").splitlines()}) == 1  # aligned
    best, marks = np.inf, []
    for row, record in zip(rows, clf.history_):
        marks.append(row[5].endswith("*"))
        cells = dict(zip(headings, (cell.rstrip("*") for cell in row)))
        assert int(cells["epoch"]) == record["epoch"]
        for key in ALL_COLUMNS[1:6] + ["seconds"]:
            assert float(cells[key]) == pytest.approx(record[key], abs=0.006 if key ==
                                                      "seconds" else 6e-5)
        assert float(cells["val_gap[exact]"]) == pytest.approx(record["val_gap"], abs=6e-5)
        improved = record["val_loss"] < best - clf.tol
        best = record["val_loss"] if improved else best
        assert marks[-1] == improved
    assert marks[0] and not any("*" in cell for row in rows for cell in row[:5] + row[6:])


def test_verbose_table_shows_the_columns_a_fit_has(biased, capsys):
    """Without protected attributes or validation: epoch, train_loss and seconds; no mark
    without early stopping; verbose=0 prints nothing at all."""
    X, y = biased
    FairNeuralClassifier(verbose=1, **FAST).fit(X[["x1", "x2"]], y)
    headings, rows = table(capsys.readouterr().out)
    assert headings == ["epoch", "train_loss", "seconds"] and len(rows) == 4
    FairNeuralClassifier(protected_attributes=PROTECTED, verbose=1, **FAST).fit(X, y)
    out = capsys.readouterr().out
    assert table(out)[0] == ALL_COLUMNS[:5] + ["seconds"] and "*" not in out
    FairNeuralClassifier(protected_attributes=PROTECTED, **FAST).fit(X, y)
    assert capsys.readouterr() == ("", "")


def test_validation_gap_heading_names_a_streamed_split(biased, capsys):
    """A validation split shorter than b_tau is predicted by a stream's step: its heading
    says so."""
    X, y = biased
    FairNeuralClassifier(protected_attributes=PROTECTED, verbose=1, early_stopping=True,
                         b_tau=500, **FAST).fit(X, y)
    assert "val_gap[stream]" in table(capsys.readouterr().out)[0]


def test_partial_fit_prints_the_header_for_its_first_chunk(biased, capsys):
    """One partial_fit call is one epoch: the header comes with the first chunk only, and
    again when the columns change (after a fit with a validation split)."""
    X, y = biased
    reg = FairNeuralRegressor(protected_attributes=["sex"], verbose=1, **FAST)
    X = X.drop(columns="race")
    reg.partial_fit(X, X["x1"]).partial_fit(X, X["x1"])
    headings, rows = table(capsys.readouterr().out)
    assert headings == ALL_COLUMNS[:5] + ["seconds"]
    assert [row[0] for row in rows] == ["1", "2"]
    reg.partial_fit(X, X["x1"])
    assert capsys.readouterr().out.split()[0] == "3"
    reg.set_params(early_stopping=True).fit(X, X["x1"])
    capsys.readouterr()
    reg.set_params(early_stopping=False).partial_fit(X, X["x1"])
    headings, rows = table(capsys.readouterr().out)
    assert "val_loss" not in headings and len(rows) == 1


@pytest.fixture
def recorded_bars(monkeypatch):
    """tqdm's bars made during the test (tqdm is the dev extra's)."""
    tqdm = pytest.importorskip("tqdm")
    made = []

    class Recording(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    return made


def test_verbose_2_draws_a_progress_bar_over_the_batches(biased, capsys, recorded_bars):
    """verbose=2: one bar over the fit's training batches (max_epochs of them), advanced by
    every batch, closed at the end (on stderr); the table still prints, row by row, on
    stdout."""
    X, y = biased
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, verbose=2, early_stopping=True,
                               n_iter_no_change=1, tol=0.5,
                               **dict(FAST, max_epochs=10)).fit(X, y)
    captured = capsys.readouterr()
    n_batches = -(-(len(X) - round(0.1 * len(X))) // FAST["batch_size"])
    assert len(recorded_bars) == 1
    bar = recorded_bars[0]
    assert clf.n_iter_ == 2  # stopped early: the bar ends short of its total
    assert (bar.total, bar.n) == (10 * n_batches, 2 * n_batches) and bar.disable  # closed
    assert "batch" in captured.err
    headings, rows = table(captured.out)
    assert headings == ALL_COLUMNS and len(rows) == 2
    FairNeuralClassifier(protected_attributes=PROTECTED, verbose=1, **FAST).fit(X, y)
    assert len(recorded_bars) == 1  # verbose=1: the table alone


def test_progress_bar_without_tqdm_falls_back_to_the_table(biased, capsys, monkeypatch):
    """verbose=2 without tqdm installed: the table alone, no error and no warning."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` raises ImportError
    with pytest.raises(ImportError):
        importlib.import_module("tqdm")
    X, y = biased
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FairNeuralClassifier(protected_attributes=PROTECTED, verbose=2, tol=10.0,
                             n_iter_no_change=1, **FAST).fit(X, y)
    captured = capsys.readouterr()
    headings, rows = table(captured.out)
    assert headings == ALL_COLUMNS[:5] + ["seconds"] and len(rows) == 2
    assert captured.err == ""


def _record_batches(monkeypatch):
    """Patches the training loop to record every batch's positions, and its raw outputs, rows,
    targets and loss weights, in the order of the steps."""
    seen = {"positions": [], "batches": []}
    batches, objective = _training.stratified_batches, _training.fair_objective

    def recording_batches(strata, batch_size, generator):
        positions = batches(strata, batch_size, generator)
        seen["positions"] += positions
        return positions

    def recording_objective(model, out, rows, target, weight):
        seen["batches"].append((out.detach().clone(), rows, target.clone(), weight.clone()))
        return objective(model, out, rows, target, weight)

    monkeypatch.setattr(_training, "stratified_batches", recording_batches)
    monkeypatch.setattr(_training, "fair_objective", recording_objective)
    return seen


@pytest.mark.parametrize("estimator, fairness", [(FairNeuralClassifier, "demographic_parity"),
                                                 (FairNeuralClassifier, "equalized_odds"),
                                                 (FairNeuralRegressor, "demographic_parity")])
def test_history_train_keys_recomputed_from_the_batches(biased, monkeypatch, estimator,
                                                        fairness):
    """train_loss (the loss after the layer, without the penalty), train_penalty, train_gap
    (before the layer) and train_fair_gap (after it) recomputed from every batch: its raw
    outputs projected again, the loss and penalty in torch operators, the gaps over the
    epoch's batches pooled. Sample weights weight the loss and the group means."""
    X, y = biased
    seen = _record_batches(monkeypatch)
    weight = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    target = y if estimator is FairNeuralClassifier else X["x1"] + y
    model = estimator(protected_attributes=PROTECTED, fairness=fairness,
                      **dict(FAST, max_epochs=1)).fit(X, target, sample_weight=weight)
    record = model.history_[0]
    if estimator is FairNeuralClassifier:
        loss, scale = _kernels.LOG_LOSS, 1.0
    else:
        loss, scale = _kernels.SQUARED_ERROR, model._target_scale
    penalty = model.distortion_penalty / scale**2
    batches = seen["batches"]
    sizes = np.array([len(out) for out, *_ in batches])
    fair = [project(out, rows, model.bounds_)[0] for out, rows, *_ in batches]
    losses = [float(torch_objective(f, out, t, w, loss, scale, 0.0))
              for f, (out, _, t, w) in zip(fair, batches)]
    penalties = [float(torch_objective(f, out, t, w, loss, scale, penalty)) - batch_loss
                 for f, (out, _, t, w), batch_loss in zip(fair, batches, losses)]
    assert record["train_loss"] == pytest.approx(np.average(losses, weights=sizes), rel=1e-6)
    assert record["train_penalty"] == pytest.approx(np.average(penalties, weights=sizes),
                                                    rel=1e-5, abs=1e-12)
    assert record["train_penalty"] > 0
    assert model.loss_curve_ == [record["train_loss"] + record["train_penalty"]]
    positions = np.concatenate(seen["positions"])
    assert sorted(positions) == list(range(len(X)))
    enc = model.group_encoder_
    groups = enc.constraint_groups(enc.transform(X[enc.names]))[torch.as_tensor(positions)]
    labels = torch.cat([t for *_, t, _ in batches]) if fairness == "equalized_odds" else None
    gap = {name: constraint_gap(fairness, torch.cat(values), groups, y_true=labels,
                                sample_weight=torch.as_tensor(weight[positions]))
           for name, values in (("raw", [out for out, *_ in batches]), ("fair", fair))}
    assert record["train_gap"] == pytest.approx(gap["raw"], abs=1e-12)
    assert record["train_fair_gap"] == pytest.approx(gap["fair"], abs=1e-9)
    assert gap["raw"] > 0.01  # the biased data's raw outputs are unfair


def test_history_without_protected_attributes(biased):
    """A plain network: the training loss is the objective itself; every key about the layer
    holds None."""
    X, y = biased
    clf = FairNeuralClassifier(early_stopping=True, **FAST).fit(X[["x1", "x2"]], y)
    assert clf.loss_curve_ == [record["train_loss"] for record in clf.history_]
    for record in clf.history_:
        assert record["train_loss"] > 0 and record["val_loss"] > 0
        assert record["val_regime"] == "unconstrained"
        assert all(record[key] is None
                   for key in ("train_penalty", "train_gap", "train_fair_gap", "val_gap"))


def _recorded_validation_split(monkeypatch):
    """Patches the validation split to record the positions it holds out."""
    held_out = []
    split = _training.validation_split

    def recording(strata, fraction, generator):
        train, val = split(strata, fraction, generator)
        held_out.append(val)
        return train, val

    monkeypatch.setattr(_training, "validation_split", recording)
    return held_out


@pytest.mark.parametrize("b_tau, regime", [(100, "exact"), (500, "stream")])
def test_validation_figures_are_what_predict_gives_on_the_split(biased, monkeypatch, b_tau,
                                                                 regime):
    """val_loss and val_gap of the kept epoch are the log loss and gap of predict_proba on the
    validation split after fit: the split predicted at once, exactly (at least b_tau rows) or
    by a stream's step from the kept epoch's dual_init_ (fewer), as val_regime says. Here
    training stops two epochs after the first one, which is kept."""
    X, y = biased
    held_out = _recorded_validation_split(monkeypatch)
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, early_stopping=True, b_tau=b_tau,
                               n_iter_no_change=2, tol=0.5, **dict(FAST, max_epochs=10))
    clf.fit(X, y)
    assert clf.n_iter_ == 3 and len(held_out[0]) < 500
    kept = clf.history_[0]
    assert {r["val_regime"] for r in clf.history_} == {regime}
    assert clf.dual_init_ != {}
    X_val, y_val = X.iloc[held_out[0]], np.asarray(y)[held_out[0]]
    p = np.clip(clf.predict_proba(X_val)[:, 1], _kernels.PROBABILITY_CLIP,
                1 - _kernels.PROBABILITY_CLIP)
    log_loss = -np.mean(y_val * np.log(p) + (1 - y_val) * np.log(1 - p))
    assert kept["val_loss"] == pytest.approx(log_loss, rel=1e-6)
    enc = clf.group_encoder_
    groups = enc.constraint_groups(enc.transform(X_val[enc.names]))
    gap = constraint_gap("demographic_parity", torch.as_tensor(p), groups)
    assert kept["val_gap"] == pytest.approx(gap, abs=1e-6)
    if regime == "exact":
        assert kept["val_gap"] <= clf.epsilon + 1e-6


def test_validation_regime_of_a_label_dependent_constraint(biased, monkeypatch):
    """Equalized odds needs labels, which predict does not have: the validation predictions
    do not go through the layer, and val_gap is their equalized-odds gap given the split's
    labels (here the kept epoch is the first: training stops two epochs after it)."""
    X, y = biased
    held_out = _recorded_validation_split(monkeypatch)
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, fairness="equalized_odds",
                               early_stopping=True, n_iter_no_change=2, tol=0.5,
                               **dict(FAST, max_epochs=10)).fit(X, y)
    assert {r["val_regime"] for r in clf.history_} == {"unconstrained"}
    X_val, y_val = X.iloc[held_out[0]], np.asarray(y)[held_out[0]]
    p = clf.predict_proba(X_val)[:, 1]
    enc = clf.group_encoder_
    groups = enc.constraint_groups(enc.transform(X_val[enc.names]))
    gap = constraint_gap("equalized_odds", torch.as_tensor(p), groups,
                         y_true=torch.as_tensor(y_val, dtype=torch.float64))
    assert clf.history_[0]["val_gap"] == pytest.approx(gap, abs=1e-6) and gap > 0


def test_convergence_warning_only_when_max_epochs_ends_an_improving_fit(biased):
    """Running out of epochs while the loss improves warns (ConvergenceWarning); a fit whose
    patience runs out on its last epoch does not."""
    X, y = biased
    X = X.drop(columns="race")
    with pytest.warns(ConvergenceWarning, match=r"max_epochs=2 epochs and the training loss"):
        FairNeuralClassifier(protected_attributes=["sex"], **dict(FAST, max_epochs=2)).fit(X, y)
    with pytest.warns(ConvergenceWarning, match="the validation loss"):
        FairNeuralClassifier(protected_attributes=["sex"], early_stopping=True, tol=0.0,
                             **dict(FAST, max_epochs=2, learning_rate=1e-3)).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = FairNeuralClassifier(protected_attributes=["sex"], tol=10.0, n_iter_no_change=1,
                                   **dict(FAST, max_epochs=2)).fit(X, y)
    assert clf.n_iter_ == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_before_anything_changes(biased):
    """device="cuda" on a machine without CUDA: a ValueError that says what to use, raised
    before training, leaving a fitted estimator as it was."""
    X, y = biased
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, **FAST).fit(X, y)
    history, proba = list(clf.history_), clf.predict_proba(X)
    with pytest.raises(ValueError, match=r"device='cuda' is not available on this machine; "
                                         r"use device='cpu'"):
        clf.set_params(device="cuda", warm_start=True).fit(X, y)
    assert clf.history_ == history
    np.testing.assert_array_equal(clf.predict_proba(X), proba)
    with pytest.raises(ValueError, match="device='cuda' is not available"):
        FairNeuralRegressor(device="cuda", **FAST).partial_fit(X[["x1"]], X["x2"])


def test_train_loss_is_not_the_objective_less_a_huge_penalty(biased):
    """Outputs 1e15 beyond the bounds make the penalty dwarf the loss: train_loss is the loss
    at the fair outputs itself (the objective less the penalty cancelled to nonsense, even
    below 0)."""
    X, y = biased

    class Huge(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(X.shape[1] - len(PROTECTED) + 2, 1)

        def forward(self, x):
            return self.linear(x) * 1e15

    target = X["x1"] + y
    model = FairNeuralRegressor(protected_attributes=PROTECTED, module=Huge(),
                                bounds=(float(target.min()), float(target.max())),
                                **dict(FAST, max_epochs=1, learning_rate=1e-30))
    record = model.fit(X, target).history_[0]
    assert record["train_penalty"] > 1e20
    fair = torch.as_tensor(model.predict(X), dtype=torch.float64)
    scale = model._target_scale
    direct = float(((fair - torch.as_tensor(target.to_numpy(), dtype=torch.float64)) / scale)
                   .square().mean())
    assert 0 < record["train_loss"] < 100 * direct + 1.0
