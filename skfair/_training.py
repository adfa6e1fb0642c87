"""Training a network through the fairness layer.

:func:`train` runs epochs until the monitored loss stops improving or ``max_epochs`` ends it:
:func:`run_epoch` deals the samples into stratified batches (:func:`stratified_batches`),
:func:`train_step` computes a batch's loss (through the layer, with the batch's constraint rows
from :class:`RowCache`) and steps the optimizer, and :func:`epoch_record` writes the epoch's
entry of ``history_``. The estimator passed around as ``model`` supplies the network
(``module_``), its output function and losses, the constraint and the training parameters.
"""

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
    """What one pass over the training samples gave: its mean loss, the ``(rows,
    multipliers, raw outputs)`` of every batch through the layer, and the batches (positions
    in the training samples)."""

    loss: float
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
    of the epoch's projections), which the epoch's validation predictions start from."""
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
    for epoch in range(first, first + model.max_epochs):
        start = time.perf_counter()
        result = run_epoch(model, data, train_idx, row_cache, optimizer, epoch, generator, device)
        if row_cache is not None:
            model.dual_init_ = _streaming.warm_start_duals(result.solved, len(result.positions))
        record = epoch_record(model, data, epoch, result, (train_idx, val_idx), device)
        record["seconds"] = time.perf_counter() - start
        model.history_.append(record)
        report(model, record)
        monitored = record["train_loss"] if val_idx is None else record["val_loss"]
        if schedule is not None:
            schedule.step(monitored)
        if stopping.stops(monitored, model.module_):
            break
    else:
        warn(f"{type(model).__name__} ran max_epochs={model.max_epochs} epochs and the "
             f"{'validation' if val_idx is not None else 'training'} loss was still "
             f"improving by more than tol={model.tol}; raise max_epochs, or learning_rate, "
             f"to train to convergence.", ConvergenceWarning)
    stopping.restore_best(model.module_)


def train_chunk(model, data, generator, device, optimizer_state):
    """One epoch over ``data`` (a chunk of partial_fit), continuing the optimizer from
    ``optimizer_state`` (None on the first chunk); returns the optimizer's new state."""
    optimizer = make_optimizer(model, device)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    row_cache = RowCache(model, data) if data.groups is not None else None
    split = (np.arange(len(data.target)), None)
    epoch = len(model.history_) + 1
    start = time.perf_counter()
    result = run_epoch(model, data, split[0], row_cache, optimizer, epoch, generator, device)
    model.dual_init_ = {} if row_cache is None else _streaming.warm_start_duals(
        result.solved, len(result.positions))
    record = epoch_record(model, data, epoch, result, split, device)
    record["seconds"] = time.perf_counter() - start
    model.history_.append(record)
    report(model, record)
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


def run_epoch(model, data, train_idx, row_cache, optimizer, epoch, generator, device):
    """One pass over the training samples (``train_idx``), as an :class:`Epoch`."""
    model.module_.train()
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
    return Epoch(total / len(train_idx), solved, positions)


def train_step(model, optimizer, batch, row_cache, key, epoch, device):
    """Loss, gradient and optimizer step of one batch: ``(loss value, (rows, multipliers, raw
    outputs) or None)``."""
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
            loss, lam = fair_objective(model, out, batch_rows, tb, lb)
        except InfeasibleConstraintError as exc:
            raise named_infeasibility(exc, model.splitter_.encoder, model.bounds_) from exc
        solved = (batch_rows, lam, out.detach())
    value = float(loss.detach())
    if not math.isfinite(value):  # before the step: it would make the weights NaN
        raise _diverged(epoch, f"the loss is {value}")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return value, solved


def fair_objective(model, out, batch_rows, target, weight):
    """``(loss, lam)`` of a training batch through the fairness layer: the weighted mean loss
    at the fair outputs plus the distortion penalty, and the projection's multipliers (a
    host array in the order of ``batch_rows.keys``; None from qpth).

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
    """The epoch's entry of ``history_`` (without its duration); ``result`` is its
    :class:`Epoch`, ``split`` the training and validation positions (None without)."""
    train_idx, val_idx = split
    record = {"epoch": epoch, "train_loss": result.loss, "train_gap": None, "val_loss": None,
              "val_gap": None}
    if data.groups is not None:
        # over the epoch's batches, as they came (like the loss): no extra pass; the raw
        # outputs put back in the order of the training samples
        raw = torch.empty(len(train_idx), dtype=torch.float64, device=device)
        raw.index_copy_(0, torch.from_numpy(np.concatenate(result.positions)).to(device),
                        torch.cat([r for _, _, r in result.solved]))
        train = torch.from_numpy(train_idx)
        record["train_gap"] = constraint_gap(
            model.constraint_, raw, data.groups[train].to(device),
            y_true=model._labels_for(data.target[train].to(device)),
            sample_weight=data.weight[train].to(device) if data.weighted_means else None)
    if val_idx is not None:
        record["val_loss"], record["val_gap"] = evaluate(
            model, *(None if c is None else c[val_idx]
                     for c in (data.X, data.target, data.weight, data.loss_weight,
                               data.groups)), device)
    return record


def evaluate(model, X, target, weight, loss_weight, groups, device):
    """Validation loss and gap of the outputs the estimator would predict."""
    with torch.no_grad():
        model.module_.eval()
        out = model._output(outputs(model.module_, X.to(device)).double())
        fair = model._fair_outputs(out, None if groups is None else groups.to(device))
        loss = float(model._mean_loss(fair, target.to(device), loss_weight.to(device)))
        gap = None
        if groups is not None:
            gap = constraint_gap(model.constraint_, fair, groups,
                                 y_true=model._labels_for(target), sample_weight=weight)
    return loss, gap


def report(model, record):
    if not model.verbose:
        return
    gap = "" if record["train_gap"] is None else f", gap {record['train_gap']:.4f} (before layer)"
    val = "" if record["val_loss"] is None else f", val loss {record['val_loss']:.4f}"
    print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f}{gap}{val}, "
          f"{record['seconds']:.2f}s")


class EarlyStopping:
    """Stops after ``patience`` epochs without an improvement of at least ``tol`` of the
    monitored loss; with ``keep_best``, remembers the best network's weights."""

    def __init__(self, tol, patience, keep_best):
        self.tol, self.patience, self.keep_best = tol, patience, keep_best
        self.best, self.best_state, self.stall = np.inf, None, 0

    def stops(self, monitored, module):
        if monitored < self.best - self.tol:
            self.best, self.stall = monitored, 0
            if self.keep_best:
                self.best_state = copy.deepcopy(module.state_dict())
            return False
        self.stall += 1
        return self.stall >= self.patience

    def restore_best(self, module):
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


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
    n_batches = max(1, -(-n // batch_size))
    order = torch.randperm(n, generator=generator).numpy()
    members = order[_stable_order(strata[order])]
    return [members[b::n_batches] for b in range(n_batches)]


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
