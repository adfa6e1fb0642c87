"""Training a network through the fairness layer.

:func:`train` runs epochs until the monitored loss stops improving (:class:`EarlyStopping`) or
``max_epochs`` ends it: :func:`run_epoch` deals the samples into stratified batches
(:func:`stratified_batches`), :func:`train_step` computes a batch's loss (through the layer,
with the batch's constraint rows from :class:`RowCache`, by :func:`fair_objective`) and steps
the optimizer, :func:`epoch_record` writes the epoch's entry of ``history_`` and
:func:`report` prints it (``verbose``), under a progress bar (:func:`progress_bar`). The
estimator passed around as ``model`` supplies the network (``module_``), its output function
and losses, the constraint and the training parameters.
"""

import contextlib
import copy
import math
import numbers
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from . import _streaming
from ._network import outputs
from ._warnings import warn
from .constraints import InfeasibleConstraintError, constraint_gap
from .layer import TrainingLoss, training_objective


@dataclass
class Epoch:
    """What one pass over the training samples gave: its mean objective (loss and distortion
    penalty), the ``(rows, multipliers, raw outputs, fair outputs)`` of every batch through the
    layer, and the batches (positions in the training samples)."""

    objective: float
    solved: list
    positions: list


@dataclass
class TrainingData:
    """The tensors of a fit, on the host: network inputs (float32), targets, sample weights
    (of the loss and of the constraint's group means) and loss weights (the sample weights
    times any class weights: of the loss only), all float64, constraint group codes (or
    None), every sample's stratum, and whether the sample weights are unequal (then the
    constraint's group means are weighted)."""

    X: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor
    loss_weight: torch.Tensor
    groups: torch.Tensor
    strata: np.ndarray
    weighted_means: bool

    @classmethod
    def of(cls, features, target, weight, groups, constraint, loss_weight=None):
        weight_tensor = torch.tensor(weight, dtype=torch.float64)
        return cls(torch.tensor(features, dtype=torch.float32),
                   torch.tensor(target, dtype=torch.float64), weight_tensor,
                   weight_tensor if loss_weight is None else torch.tensor(loss_weight,
                                                                          dtype=torch.float64),
                   groups, strata(groups, target, constraint),
                   len(weight) > 0 and not np.all(weight == weight[0]))

    def columns(self):
        """The per-sample tensors a batch takes its rows of."""
        columns = (self.X, self.target, self.weight, self.loss_weight)
        return columns if self.groups is None else (*columns, self.groups)


def train(model, data, generator, device):
    """Train ``model.module_`` on ``data``, appending to ``model.history_``. Every epoch sets
    ``model.dual_init_``, the stream's warm start (:func:`skfair._streaming.warm_start_duals`
    of the epoch's projections), which the epoch's validation predictions start from; with
    early stopping, the best epoch's network and ``dual_init_`` are put back at the end."""
    train_idx, val_idx = np.arange(len(data.target)), None
    if model.early_stopping:
        train_idx, val_idx = validation_split(data.strata, model.validation_fraction, generator)
    optimizer = make_optimizer(model, device)
    schedule = None
    if model.learning_rate_schedule == "adaptive":
        # scikit-learn MLP's "adaptive": divided by 5 after two epochs without an improvement
        # of at least tol of the monitored loss
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.2, patience=1, threshold=model.tol, threshold_mode="abs")
    row_cache = RowCache(model, data) if data.groups is not None else None
    stopping = EarlyStopping(model.tol, model.n_iter_no_change, keep_best=val_idx is not None)
    first = len(model.history_) + 1
    model.dual_init_ = {}
    n_batches = batch_count(len(train_idx), model.batch_size)
    with progress_bar(model, model.max_epochs * n_batches) as bar:
        for epoch in range(first, first + model.max_epochs):
            start = time.perf_counter()
            result = run_epoch(model, data, train_idx, row_cache, optimizer, epoch, generator,
                               device, bar)
            if row_cache is not None:
                model.dual_init_ = _streaming.warm_start_duals(result.solved,
                                                               len(result.positions))
            record = epoch_record(model, data, epoch, result, (train_idx, val_idx), device)
            record["seconds"] = time.perf_counter() - start
            model.history_.append(record)
            # without a validation split: the objective the optimizer minimises
            monitored = result.objective if val_idx is None else record["val_loss"]
            if schedule is not None:
                schedule.step(monitored)
            improved = stopping.update(monitored, model)
            report(model, record, bar, header=epoch == first,
                   best=improved and val_idx is not None)
            if stopping.exhausted:
                break
    if not stopping.exhausted:  # after the bar is gone: the warning would cut through it
        warn(f"{type(model).__name__} ran max_epochs={model.max_epochs} epochs and the "
             f"{'validation' if val_idx is not None else 'training'} loss was still "
             f"improving by more than tol={model.tol}; raise max_epochs, or learning_rate, "
             f"to train to convergence.", ConvergenceWarning)
    stopping.restore_best(model)


def train_chunk(model, data, generator, device, optimizer_state):
    """One epoch over ``data`` (a chunk of partial_fit), continuing the optimizer from
    ``optimizer_state`` (None on the first chunk); returns the optimizer's new state."""
    optimizer = make_optimizer(model, device)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    row_cache = RowCache(model, data) if data.groups is not None else None
    split = (np.arange(len(data.target)), None)
    epoch = len(model.history_) + 1
    with progress_bar(model, batch_count(len(split[0]), model.batch_size)) as bar:
        start = time.perf_counter()
        result = run_epoch(model, data, split[0], row_cache, optimizer, epoch, generator,
                           device, bar)
        model.dual_init_ = {} if row_cache is None else _streaming.warm_start_duals(
            result.solved, len(result.positions))
        record = epoch_record(model, data, epoch, result, split, device)
        record["seconds"] = time.perf_counter() - start
        previous = model.history_[-1] if model.history_ else None
        model.history_.append(record)
        # a header for the first chunk, or when the columns change (after a fit's validation)
        report(model, record, bar, header=previous is None
               or table_columns(previous) != table_columns(record), best=False)
    return optimizer.state_dict()


def make_optimizer(model, device):
    """The optimizer ``model.optimizer`` names over the network's parameters."""
    params = list(model.module_.parameters())
    if model.optimizer == "sgd":  # with scikit-learn MLP's momentum
        return torch.optim.SGD(params, lr=model.learning_rate, momentum=0.9, nesterov=True,
                               weight_decay=model.weight_decay)
    # fused: one kernel updates every parameter, instead of about ten operations for each
    # (a large part of a small network's training step on the CPU)
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    kind = torch.optim.AdamW if model.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=model.learning_rate, weight_decay=model.weight_decay,
                fused=fused or None)


def run_epoch(model, data, train_idx, row_cache, optimizer, epoch, generator, device, bar):
    """One pass over the training samples (``train_idx``), as an :class:`Epoch`; ``bar``, a
    progress bar (or None), advances by one per batch."""
    model.module_.train()
    if bar is not None:
        bar.set_description(f"epoch {epoch}", refresh=False)
    positions = stratified_batches(data.strata[train_idx], model.batch_size, generator)
    # The epoch's rows gathered once, in batch order, then a contiguous slice per batch:
    # gathering every batch's rows from the whole data costs several times more.
    order = torch.from_numpy(train_idx[np.concatenate(positions)])
    sizes = [len(b) for b in positions]
    batches = zip(*(c.index_select(0, order).split(sizes) for c in data.columns()))
    keys = row_cache.keys(order, sizes) if row_cache is not None else None
    total, solved = 0.0, []
    for step, batch in enumerate(batches):
        value, fair = train_step(model, optimizer, batch, row_cache,
                                 None if keys is None else keys[step], epoch, device)
        if fair is not None:
            solved.append(fair)
        total += value * len(batch[0])
        if bar is not None:
            bar.update()
    return Epoch(total / len(train_idx), solved, positions)


def train_step(model, optimizer, batch, row_cache, key, epoch, device):
    """Loss, gradient and optimizer step of one batch: ``(objective value, (rows, multipliers,
    raw outputs, fair outputs) or None)``."""
    xb, tb, wb, lb, *gb = (c.to(device) for c in batch)
    out = model._output(outputs(model.module_, xb).double())
    if not bool(torch.isfinite(out).all()):
        raise _diverged(epoch, "the network's outputs are NaN or infinite")
    solved = None
    if row_cache is None:
        loss = model._mean_loss(out, tb, lb)
    else:
        try:
            batch_rows = row_cache.get(key, gb[0], tb, wb)
            loss, lam, fair = fair_objective(model, out, batch_rows, tb, lb)
        except InfeasibleConstraintError as exc:
            raise named_infeasibility(exc, model.splitter_.encoder, model.bounds_) from exc
        solved = (batch_rows, lam, out.detach(), fair)
    value = float(loss.detach())
    if not math.isfinite(value):  # before the step: it would make the weights NaN
        raise _diverged(epoch, f"the loss is {value}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return value, solved


def fair_objective(model, out, batch_rows, target, weight):
    """``(loss, lam, fair)`` of a training batch through the fairness layer: the weighted mean
    loss at the fair outputs plus the distortion penalty, the projection's multipliers (a
    host array in the order of ``batch_rows.keys``; None from qpth) and the fair outputs
    (detached).

    The penalty, ``distortion_penalty * ((out - fair) / _distortion_unit)**2`` per sample, is
    how far the network itself is from fair: it teaches the network to need the layer less.
    Which path computes it (the fused compiled objective, or the projection and the torch
    losses) is :func:`~skfair.layer.training_objective`'s decision.
    """
    unit = model._distortion_unit
    loss = TrainingLoss(model._sample_losses, model._compiled_loss, unit,
                        model.distortion_penalty / unit**2)
    return training_objective(out, batch_rows, model.bounds_, model.solver, target, weight,
                              loss)


def epoch_record(model, data, epoch, result, split, device):
    """The epoch's entry of ``history_`` without its duration (the keys are described in the
    estimators' ``history_``); ``result`` is its :class:`Epoch`, ``split`` the training and
    validation positions (None without)."""
    train_idx, val_idx = split
    record = {"epoch": epoch, "train_loss": result.objective, "train_penalty": None,
              "train_gap": None, "train_fair_gap": None, "val_loss": None, "val_gap": None,
              "val_regime": None}
    if data.groups is not None:
        # over the epoch's batches, as they came (like the loss): no extra pass
        order = torch.from_numpy(train_idx[np.concatenate(result.positions)])
        raw = torch.cat([raw for _, _, raw, _ in result.solved])
        fair = torch.cat([fair for *_, fair in result.solved])
        record["train_loss"], record["train_penalty"] = epoch_loss_and_penalty(
            model, raw, fair, data.target[order].to(device), data.loss_weight[order].to(device),
            [len(b) for b in result.positions])
        groups = data.groups[order].to(device)
        labels = model._labels_for(data.target[order].to(device))
        weight = data.weight[order].to(device) if data.weighted_means else None
        record["train_gap"], record["train_fair_gap"] = (
            constraint_gap(model.constraint_, values, groups, y_true=labels,
                           sample_weight=weight) for values in (raw, fair))
    if val_idx is not None:
        record["val_loss"], record["val_gap"], record["val_regime"] = evaluate(
            model, *(None if c is None else c[val_idx]
                     for c in (data.X, data.target, data.weight, data.loss_weight,
                               data.groups)), device)
    return record


def epoch_loss_and_penalty(model, raw, fair, target, loss_weight, sizes):
    """The loss and the distortion penalty of an epoch's objective, each computed from the raw
    and fair outputs of its batches (of ``sizes``, in order), their targets and loss weights:
    per batch, the weighted mean of the loss at the fair outputs and of ``distortion_penalty *
    ((raw - fair) / unit)**2``; over the batches, the mean weighted by their sizes, as
    :func:`run_epoch` averages the objective. (Not the objective less the penalty: where the
    penalty dwarfs the loss, that difference cancels.)"""
    sizes = torch.tensor(sizes, device=raw.device)
    batch = torch.repeat_interleave(torch.arange(len(sizes), device=raw.device), sizes)
    weights = torch.zeros(len(sizes), dtype=torch.float64, device=raw.device).index_add_(
        0, batch, loss_weight)

    def epoch_mean(values):
        sums = torch.zeros_like(weights).index_add_(0, batch, loss_weight * values)
        return float((sums / weights * sizes).sum()) / len(raw)

    fair = fair.to(torch.float64)
    losses = model._sample_losses(fair, target.to(fair.dtype))
    distortion = ((raw.to(torch.float64) - fair) / model._distortion_unit) ** 2
    return epoch_mean(losses), model.distortion_penalty * epoch_mean(distortion)


def evaluate(model, X, target, weight, loss_weight, groups, device):
    """``(loss, gap, regime)`` of the validation split: the loss and gap of the outputs
    ``predict`` (with ``inference="batch"``) gives for the whole split at once, and how they
    went through the layer (the estimator's ``_prediction_regime``)."""
    with torch.no_grad():
        model.module_.eval()
        out = model._output(outputs(model.module_, X.to(device)).double())
        fair = model._fair_outputs(out, None if groups is None else groups.to(device))
        loss = float(model._mean_loss(fair, target.to(device), loss_weight.to(device)))
        gap = None
        if groups is not None:
            gap = constraint_gap(model.constraint_, fair, groups,
                                 y_true=model._labels_for(target), sample_weight=weight)
    return loss, gap, model._prediction_regime(len(target), groups)


#: the columns of the verbose table, keys of ``history_``, and the format of their values
TABLE_FORMATS = {"epoch": "{:d}", "train_loss": "{:.4f}", "train_penalty": "{:.4f}",
                 "train_gap": "{:.4f}", "train_fair_gap": "{:.4f}", "val_loss": "{:.4f}",
                 "val_gap": "{:.4f}", "seconds": "{:.2f}"}


def table_columns(record):
    """The columns of the verbose table for ``record``: the keys it has values for."""
    return [key for key in TABLE_FORMATS if record[key] is not None]


def report(model, record, bar, header, best):
    """Print the epoch's row of the verbose table, after the table's header when ``header``;
    ``best`` marks the validation loss with ``*``. The validation gap's heading names its
    regime. Through ``bar`` (tqdm's writer) when there is one: the bar stays below the table."""
    if not model.verbose:
        return
    write = print if bar is None else bar.write
    columns = table_columns(record)
    headings = [f"val_gap[{record['val_regime']}]" if key == "val_gap" else key
                for key in columns]
    # the mark's place is kept in every row so that the columns stay aligned
    widths = [max(len(heading), 9) for heading in headings]
    if header:
        write("  ".join(heading.rjust(width) for heading, width in zip(headings, widths)))
        write("  ".join("-" * width for width in widths))
    cells = [TABLE_FORMATS[key].format(record[key]) for key in columns]
    cells = [cell + ("*" if best else " ") if key == "val_loss" else cell
             for key, cell in zip(columns, cells)]
    write("  ".join(cell.rjust(width) for cell, width in zip(cells, widths)))


def _tqdm():
    """tqdm's progress bar class, or None when tqdm (an optional dependency) is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


@contextlib.contextmanager
def progress_bar(model, n_batches):
    """A progress bar over ``n_batches`` training batches at ``verbose >= 2`` (removed when
    training ends), or None: below, or without tqdm (then verbose shows the table alone)."""
    bar_class = _tqdm() if model.verbose >= 2 else None
    if bar_class is None:
        yield None
        return
    bar = bar_class(total=n_batches, unit="batch", leave=False)
    try:
        yield bar
    finally:
        bar.close()


class EarlyStopping:
    """Counts the epochs without an improvement of at least ``tol`` of the monitored loss;
    with ``keep_best``, remembers the best epoch's network weights and stream warm start
    (``dual_init_``), which :meth:`restore_best` puts back: the model that epoch's validation
    figures describe."""

    def __init__(self, tol, patience, keep_best):
        self.tol, self.patience, self.keep_best = tol, patience, keep_best
        self.best, self.best_state, self.stall = np.inf, None, 0

    def update(self, monitored, model):
        """Whether ``monitored`` improves on the best by at least ``tol`` (then, with
        ``keep_best``, ``model``'s state is remembered)."""
        if monitored < self.best - self.tol:
            self.best, self.stall = monitored, 0
            if self.keep_best:
                self.best_state = (copy.deepcopy(model.module_.state_dict()), model.dual_init_)
            return True
        self.stall += 1
        return False

    @property
    def exhausted(self):
        """Whether the last ``patience`` epochs brought no improvement."""
        return self.stall >= self.patience

    def restore_best(self, model):
        """Give ``model`` back the network and ``dual_init_`` of the best epoch (if any)."""
        if self.best_state is not None:
            state, model.dual_init_ = self.best_state
            model.module_.load_state_dict(state)


class RowCache:
    """The constraint rows of the training batches, built once per batch composition.

    Batches come in stratum order (:func:`stratified_batches`), so batches of the same
    composition have the same groups (and labels): a key of what the rows depend on
    (:meth:`keys`) finds rows built for an earlier batch, of this epoch or an earlier one.
    Weighted batches rarely share a key: the cache then keeps one epoch's rows at most.
    """

    def __init__(self, model, data):
        self.model, self.data, self.built = model, data, {}
        codes = data.strata
        #: the strata in the smallest integer type that holds them: a byte per sample instead
        #: of eight per attribute for the groups (every epoch hashes a key of every batch)
        self.codes = codes.astype(np.min_scalar_type(max(int(codes.max(initial=0)), 0)))

    def keys(self, order, sizes):
        """For every batch of an epoch (the samples ``order`` cut in ``sizes``), what its rows
        depend on, as a hashable value: the bytes of its strata (:func:`strata`: the groups,
        and the labels when the constraint's rows split by label), of its labels when the
        constraint reads their values, and of its weights when they are unequal."""
        if len(self.built) > 2 * len(sizes):
            self.built.clear()
        columns = [self.codes]
        constraint = self.model.constraint_
        if constraint.requires_y_true and not constraint.label_cells:
            columns.append(self.data.target.numpy())
        if self.data.weighted_means:
            columns.append(self.data.weight.numpy())
        cuts = np.cumsum(sizes)[:-1]
        split = [np.split(column[order.numpy()], cuts) for column in columns]
        return [tuple(part.tobytes() for part in parts) for parts in zip(*split)]

    def get(self, key, groups, target, weight):
        """The rows of the batch of ``key`` (its groups, targets and weights)."""
        batch_rows = self.built.get(key)
        if batch_rows is None:
            model = self.model
            batch_rows = self.built[key] = model.constraint_.build(
                groups, epsilon=model.epsilon, y_true=model._labels_for(target),
                sample_weight=weight if self.data.weighted_means else None)
        return batch_rows


def strata(groups, target, constraint):
    """Stratum of every sample: its combination of groups (and label, if the rows use it)."""
    keys = [] if groups is None else [groups.numpy()]
    if constraint is not None and constraint.label_cells:
        keys.append(target[:, None].astype(np.int64))
    if not keys:
        return np.zeros(len(target), dtype=np.int64)
    return np.unique(np.hstack(keys), axis=0, return_inverse=True)[1].reshape(-1)


def stratified_batches(strata, batch_size, generator):
    """Mini-batches (index arrays) in which every stratum keeps its share of the data.

    The samples, shuffled and then grouped by stratum, are dealt to the batches in turn: each
    batch gets the floor or the ceiling of every stratum's share, the batches' sizes differ
    by one at most, and no sample is dropped.
    """
    n = len(strata)
    n_batches = batch_count(n, batch_size)
    order = torch.randperm(n, generator=generator).numpy()
    members = order[_stable_order(strata[order])]
    return [members[b::n_batches] for b in range(n_batches)]


def batch_count(n_samples, batch_size):
    """The batches of an epoch over ``n_samples``: ``ceil(n_samples / batch_size)``, at least
    one."""
    return max(1, -(-n_samples // batch_size))


def validation_split(strata, fraction, generator):
    """``(train, validation)`` positions: ``fraction`` of every stratum held out."""
    order = torch.randperm(len(strata), generator=generator).numpy()
    val = []
    for s in np.unique(strata):
        members = order[strata[order] == s]
        val.append(members[:int(round(fraction * len(members)))])
    val = np.sort(np.concatenate(val))
    if len(val) == 0 or len(val) == len(strata):
        raise ValueError(
            f"validation_fraction={fraction} leaves no validation or no training samples for "
            f"{len(strata)} samples."
        )
    return np.setdiff1d(np.arange(len(strata)), val), val


def named_infeasibility(exc, encoder, bounds):
    """The infeasibility error with the attribute and group named as the user knows them
    (built-in rows are keyed ``(attribute, group code, ...)``; other keys stay as they are)."""
    names = encoder.group_names()
    key = exc.key
    if not (isinstance(key, tuple) and len(key) >= 2 and key[0] in range(len(names))
            and isinstance(key[1], numbers.Integral)
            and 0 <= key[1] < len(names[key[0]][1])):
        return exc
    name, values = names[key[0]]
    return InfeasibleConstraintError(
        f"The constraint cannot be met within bounds {bounds} for {name}="
        f"{values[key[1]]!r}: {exc}", key=exc.key)


def weighted_mean(values, weight):
    return (weight * values).sum() / weight.sum()


def _stable_order(keys):
    """``np.argsort(keys, kind="stable")`` of non-negative integers; numpy sorts 16-bit integers
    by radix (linear time) and int64 ones by merging."""
    if keys.size and keys.max() < 1 << 15:
        keys = keys.astype(np.int16)
    return np.argsort(keys, kind="stable")


def _diverged(epoch, what):
    return ValueError(
        f"Training diverged at epoch {epoch}: {what}. Lower learning_rate or "
        f"distortion_penalty, or rescale X or y."
    )
