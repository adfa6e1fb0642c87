"""What the fair neural estimators share: validation, training through the layer, inference."""

import copy
import math
import numbers
import time
import warnings
from abc import abstractmethod

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    InvalidParameterError,
    StrOptions,
)
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _calibration, _streaming
from ._network import ACTIVATIONS, make_mlp
from ._validation import GroupEncoder, resolve_protected
from .constraints import (
    AffineConstraint,
    InfeasibleConstraintError,
    constraint_gap,
    get_constraint,
)
from .layer import SOLVERS, TrainingLoss, training_objective


#: DataFrames of at most this many rows are split through one object array (see _split_columns)
SMALL_FRAME = 32
#: the smallest float64 magnitude that rounds to infinity in float32 (the network's inputs)
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


#: rows the network is evaluated on at a time at prediction (see ``_network_outputs``)
NETWORK_CHUNK = 8192


class BaseFairNeural(BaseEstimator):
    """Base class of :class:`FairNeuralClassifier` and :class:`FairNeuralRegressor`."""

    _parameter_constraints = {
        "protected_attributes": [list, tuple, str, numbers.Integral, None],
        "exclude_protected": ["boolean"],
        "fairness": [AffineConstraint, str],
        "epsilon": [Interval(numbers.Real, 0, None, closed="left")],
        "intersectional": ["boolean"],
        "solver": [StrOptions(set(SOLVERS))],
        "b_tau": [Interval(numbers.Integral, 1, None, closed="left")],
        "eta0": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "stream_warm_start": ["boolean"],
        "distortion_penalty": [Interval(numbers.Real, 0, None, closed="left")],
        "inference_batch_size": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "inference": [StrOptions({"batch", "individual"})],
        "hidden_layer_sizes": [tuple, list],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "module": [HasMethods(["forward"]), callable, None],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "device": [str, torch.device],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }

    #: fairness names this estimator accepts
    _fairness_options = ()

    def __init__(self, *, protected_attributes=None, exclude_protected=False,
                 fairness="demographic_parity", epsilon=0.05, intersectional=False,
                 solver="exact", b_tau=100, eta0=None, stream_warm_start=True,
                 distortion_penalty=10.0, inference_batch_size=None, inference="batch",
                 hidden_layer_sizes=(64, 64), activation="relu",
                 module=None, batch_size=256, max_epochs=100, learning_rate=1e-3,
                 weight_decay=0.0, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, warm_start=False, device="cpu", verbose=0,
                 random_state=None):
        self.protected_attributes = protected_attributes
        self.exclude_protected = exclude_protected
        self.fairness = fairness
        self.epsilon = epsilon
        self.intersectional = intersectional
        self.solver = solver
        self.b_tau = b_tau
        self.eta0 = eta0
        self.stream_warm_start = stream_warm_start
        self.distortion_penalty = distortion_penalty
        self.inference_batch_size = inference_batch_size
        self.inference = inference
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.module = module
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.device = device
        self.verbose = verbose
        self.random_state = random_state

    # ----------------------------------------------------------------------------------------
    # Hooks of the subclasses
    @abstractmethod
    def _encode_targets(self, y, reset):
        """Validated targets as a float64 array (classifier: 0/1)."""

    @abstractmethod
    def _output(self, raw):
        """Network output (n,) -> values in the units of the fair outputs."""

    @abstractmethod
    def _losses(self, y_fair, target):
        """Loss of every sample of a batch."""

    def _loss(self, y_fair, target, weight):
        """Weighted mean loss of a batch."""
        return _weighted_mean(self._losses(y_fair, target), weight)

    #: unit of the outputs in the distortion penalty
    _scale = 1.0

    #: :func:`skfair._kernels.objective`'s version of :meth:`_losses` (the fair training step)
    _compiled_loss = None

    @abstractmethod
    def _fit_bounds(self, target):
        """Bounds of the outputs, fixed in fit."""

    # ----------------------------------------------------------------------------------------
    # Validation
    def _validate_X(self, X, reset):
        """Split X into network features (float64 array in row-major order) and group codes
        (LongTensor or None).

        Protected columns may hold strings or categories, so only the other columns go through
        numeric validation; the protected ones are encoded by the group encoder fitted in fit.
        """
        if self.protected_attributes is None:
            # Row-major: a DataFrame converts to a column-major array, whose tensor keeps those
            # strides, and gathering a batch's rows from it is several times slower.
            features = validate_data(self, X, reset=reset, dtype=np.float64, order="C")
            self._check_float32(features, range(self.n_features_in_))
            return features, None
        names = getattr(self, "feature_names_in_", None)
        same_names = (not reset and isinstance(X, pd.DataFrame) and names is not None
                      and X.columns.tolist() == names.tolist())
        # Same column names as in fit is what sklearn's check would accept; comparing them
        # directly (as lists: pandas' element-wise comparison costs tens of microseconds)
        # saves most of a millisecond per batch of a stream.
        if not same_names:
            validate_data(self, X, reset=reset, skip_check_array=True)
        if reset:
            self.protected_indices_ = resolve_protected(
                self.protected_attributes, getattr(self, "feature_names_in_", None),
                self.n_features_in_)
        rest, protected = self._split_columns(X)
        if reset and len(rest) == 0:
            raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
        if not np.isfinite(rest).all():
            problem = "NaN" if np.isnan(rest).any() else "infinity"
            raise ValueError(f"Input X contains {problem} in a column that is not protected.")
        self._check_float32(rest, np.delete(np.arange(self.n_features_in_),
                                            self.protected_indices_))
        features = rest
        if reset:
            # Attributes keep the names the user gave ("sex", not "remainder__sex").
            attributes = self.protected_attributes
            if isinstance(attributes, (str, numbers.Integral)):
                attributes = [attributes]
            columns = getattr(self, "feature_names_in_", range(self.n_features_in_))
            names = [a if isinstance(a, str) else str(columns[i])
                     for a, i in zip(attributes, self.protected_indices_)]
            self.group_encoder_ = GroupEncoder(names, self.intersectional).fit(protected)
        codes = self.group_encoder_.transform(protected)
        if not self.exclude_protected:
            features = np.hstack([features, self._one_hot(codes)])
        return np.ascontiguousarray(features), codes

    def _split_columns(self, X):
        """``(rest, protected)``: the columns of X that are not protected as a float64 array
        (NaN where pandas has a missing value) and the protected ones as an object array.

        A DataFrame's columns go to float64 block by block, without a round trip through Python
        objects (which costs seconds and gigabytes at a million rows); only a frame of a few
        rows (a stream's) goes through one object array, cheaper than pandas' column selection
        at that size; a numeric array is split as it is.
        """
        protected_indices = self.protected_indices_
        if isinstance(X, pd.DataFrame) and len(X) > SMALL_FRAME:
            rest = X.iloc[:, np.delete(np.arange(X.shape[1]), protected_indices)]
            protected = X.iloc[:, protected_indices].to_numpy(dtype=object)
            return _numeric(lambda: rest.to_numpy(dtype=np.float64, na_value=np.nan)), protected
        if isinstance(X, pd.DataFrame):
            values = X.to_numpy(dtype=object)
        elif isinstance(X, np.ndarray) and X.dtype.kind in "biuf":
            values = X
        else:
            values = np.asarray(X, dtype=object)
        if values.ndim != 2:
            raise ValueError(f"Expected a 2D X (samples x features); got shape {values.shape}.")
        rest = np.delete(values, protected_indices, axis=1)
        if isinstance(X, pd.DataFrame):  # missing values as NaN, as the block path has them
            rest[pd.isna(rest)] = np.nan
        return (_numeric(lambda: rest.astype(np.float64)),
                values[:, protected_indices].astype(object))

    def _check_float32(self, features, columns):
        """Raise, naming the columns of X (``columns``: their positions), where a finite value
        overflows the network's float32 inputs: the network would turn it into NaN."""
        peak = np.abs(features).max(axis=0, initial=0.0)
        over = np.flatnonzero(peak >= FLOAT32_OVERFLOW)
        if len(over):
            names = getattr(self, "feature_names_in_", None)
            named = [str(names[columns[j]]) if names is not None else int(columns[j])
                     for j in over]
            raise ValueError(
                f"X has values beyond float32's range (about 3.4e38), the network's input "
                f"precision, in column(s) {named}; rescale them, e.g. with a StandardScaler."
            )

    def _one_hot(self, codes):
        """Protected attributes as network inputs: a 0/1 column for binary ones, else one-hot."""
        blocks = []
        for j, categories in enumerate(self.group_encoder_.categories_):
            column = codes[:, j].numpy()
            if len(categories) == 2:
                blocks.append(column[:, None].astype(np.float64))
            else:
                blocks.append(np.eye(len(categories))[column])
        return np.hstack(blocks)

    def _validate_params(self):
        """sklearn's checks of ``_parameter_constraints``, then what they let through: booleans
        for numbers (``True`` is an integral number to Python) and the hidden layer sizes."""
        super()._validate_params()
        for name, constraints in self._parameter_constraints.items():
            value = getattr(self, name)
            numeric = any(isinstance(c, Interval) or c is numbers.Integral for c in constraints)
            if isinstance(value, (bool, np.bool_)) and numeric and "boolean" not in constraints:
                raise InvalidParameterError(
                    f"The {name!r} parameter of {type(self).__name__} must be a number, not a "
                    f"bool; got {value!r}."
                )
        sizes = list(self.hidden_layer_sizes)
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_))
                   and s >= 1 for s in sizes):
            raise InvalidParameterError(
                f"hidden_layer_sizes must hold positive integers (the widths of the hidden "
                f"layers); got {self.hidden_layer_sizes!r}."
            )

    def _check_fairness(self):
        if isinstance(self.fairness, AffineConstraint):
            return self.fairness
        if self.fairness not in self._fairness_options:
            raise ValueError(
                f"fairness must be one of {list(self._fairness_options)} or an AffineConstraint "
                f"instance; got {self.fairness!r}."
            )
        return get_constraint(self.fairness)

    # ----------------------------------------------------------------------------------------
    # Training
    def fit(self, X, y, sample_weight=None):
        """Train the network through the fairness layer.

        A failed call changes nothing: the arguments are validated first, and an error during
        training (or an interruption) restores the estimator as it was before the call. A
        successful one ends the current stream of :meth:`partial_predict` (its multipliers are
        keyed by the group codes of the previous fit).

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)
            Features, including the protected columns.
        y : array-like of shape (n_samples,)
            Targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples in the loss and in the group means of the constraints:
            finite, non-negative and not all zero.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        self._validate_params()
        device = self._check_device()
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        constraint = self._check_fairness()
        if self.inference == "individual" and constraint.requires_y_true:
            raise ValueError(
                f"inference='individual' applies offsets learned once to every later row, and "
                f"{constraint!r} needs true labels, which rows at prediction time do not have; "
                f"use a label-free constraint (e.g. demographic_parity) or inference='batch'.")
        # Validating X and y records what they define (feature names, groups, classes), and
        # training changes a warm-started network in place: everything is put back on failure.
        previous = self._fitted_state()
        try:
            self._fit(X, y, sample_weight, constraint, device, previous)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(previous)
            raise
        return self

    def _fitted_state(self):
        """The attributes as they are, to put back if fit fails: fit replaces fitted attributes
        rather than changing them, except a warm-started network (trained in place, so
        deep-copied) and its history (appended to)."""
        state = dict(self.__dict__)
        if self.warm_start and "module_" in state:
            state["module_"] = copy.deepcopy(state["module_"])
        if "history_" in state:
            state["history_"] = list(state["history_"])
        return state

    def _fit(self, X, y, sample_weight, constraint, device, previous):
        features, codes = self._validate_X(X, reset=True)
        target = self._encode_targets(y, reset=True)
        if len(target) != len(features):
            raise ValueError(
                f"X and y have inconsistent numbers of samples: {len(features)} and "
                f"{len(target)}."
            )
        weight = _check_sample_weight(sample_weight, features, dtype=np.float64,
                                      ensure_non_negative=True)
        warm = self.warm_start and "module_" in previous
        inputs = previous.get("_n_network_inputs")
        if warm and inputs is not None and inputs != features.shape[1]:
            raise ValueError(
                f"warm_start=True continues training the fitted network, which takes {inputs} "
                f"inputs; this X gives {features.shape[1]} (its columns, their protected groups "
                f"or exclude_protected changed). Fit with warm_start=False to train a new one."
            )
        self._end_streams()
        self.constraint_ = constraint if codes is not None else None
        self.bounds_ = self._fit_bounds(target)
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        generator = torch.Generator().manual_seed(int(seed))
        if not warm:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                self.module_ = self._build_module(features.shape[1])
            self.history_ = []
        self._n_network_inputs = features.shape[1]
        self.module_.to(device)
        groups = None if codes is None else self.group_encoder_.constraint_groups(codes)
        self._train(features, target, weight, groups, generator, device)
        self.__dict__.pop("calibration_", None)
        if self.inference == "individual" and groups is not None:
            self.calibration_ = self._calibration(self._network_outputs(features), groups)

    def _check_device(self):
        """The torch device of ``device``, which must exist on this machine."""
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"device={self.device!r} is not a torch device ({exc}); use e.g. 'cpu' or "
                f"'cuda'."
            ) from None
        if not _available(device):
            raise ValueError(
                f"device={self.device!r} is not available on this machine; use device='cpu' "
                f"(or a device that torch.{device.type} reports as available)."
            )
        return device

    def _build_module(self, n_features):
        if self.module is None:
            return make_mlp(n_features, self.hidden_layer_sizes, self.activation)
        if isinstance(self.module, torch.nn.Module):
            module = copy.deepcopy(self.module)
        else:
            module = self.module(n_features)
            if not isinstance(module, torch.nn.Module):
                raise ValueError(
                    f"module must be a torch.nn.Module or a callable returning one; the callable "
                    f"returned {type(module).__name__}."
                )
        # The inputs are float32 (the projection works in float64 on the outputs): a module in
        # another precision would fail at its first product, with torch's message.
        other = {str(p.dtype) for p in module.parameters()
                 if p.is_floating_point() and p.dtype != torch.float32}
        if other:
            raise ValueError(
                f"module must take float32 inputs; it has {', '.join(sorted(other))} parameters "
                f"(convert it with module.float())."
            )
        return module

    def _strata(self, groups, target):
        """Stratum of every sample: its combination of groups (and label, if the rows use it)."""
        keys = [] if groups is None else [groups.numpy()]
        if self.constraint_ is not None and self.constraint_.label_cells:
            keys.append(target[:, None].astype(np.int64))
        if not keys:
            return np.zeros(len(target), dtype=np.int64)
        return np.unique(np.hstack(keys), axis=0, return_inverse=True)[1].reshape(-1)

    def _batches(self, strata, generator):
        """Mini-batches (index arrays) in which every stratum keeps its share of the data.

        The samples, shuffled and then grouped by stratum, are dealt to the batches in turn: each
        batch gets the floor or the ceiling of every stratum's share, the batches' sizes differ
        by one at most, and no sample is dropped.
        """
        n = len(strata)
        n_batches = max(1, -(-n // self.batch_size))
        order = torch.randperm(n, generator=generator).numpy()
        members = order[_stable_order(strata[order])]
        return [members[b::n_batches] for b in range(n_batches)]

    def _train(self, features, target, weight, groups, generator, device):
        X = torch.tensor(features, dtype=torch.float32)
        t = torch.tensor(target, dtype=torch.float64)
        w = torch.tensor(weight, dtype=torch.float64)
        strata = self._strata(groups, target)
        train_idx = np.arange(len(target))
        val_idx = None
        if self.early_stopping:
            train_idx, val_idx = self._validation_split(strata, generator)
        # Equal weights leave every group mean unchanged: the rows then skip them (cheaper).
        weighted_means = len(weight) > 0 and not np.all(weight == weight[0])
        fair_training = groups is not None
        if fair_training:
            # the training samples' groups, labels and weights, for the gap after every epoch
            train = torch.from_numpy(train_idx)
            gap_inputs = (groups[train].to(device),
                          self._labels_for(t[train].to(device)),
                          w[train].to(device) if weighted_means else None)
        params = list(self.module_.parameters())
        # fused: one kernel updates every parameter, instead of about ten operations for each
        # (a large part of a small network's training step on the CPU)
        fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        optimizer = torch.optim.Adam(params, lr=self.learning_rate,
                                     weight_decay=self.weight_decay, fused=fused or None)
        best_loss, best_state, stall = np.inf, None, 0
        for epoch in range(len(self.history_) + 1, len(self.history_) + self.max_epochs + 1):
            start = time.perf_counter()
            self.module_.train()
            total, solved = 0.0, []
            positions = self._batches(strata[train_idx], generator)
            # The epoch's rows gathered once, in batch order, then a contiguous slice per batch:
            # gathering every batch's rows from the whole data costs several times more.
            order = torch.from_numpy(train_idx[np.concatenate(positions)])
            columns = (X, t, w, groups) if fair_training else (X, t, w)
            sizes = [len(b) for b in positions]
            batches = zip(*(c.index_select(0, order).split(sizes) for c in columns))
            if fair_training:
                # Each batch's samples come in stratum order, so batches of the same composition
                # have the same groups (and labels): their rows are built once per epoch.
                batch_rows = {}
                row_keys = self._row_keys(order, sizes, strata, t, w if weighted_means else None)
            for step, (xb, tb, wb, *gb) in enumerate(batches):
                xb, tb, wb = xb.to(device), tb.to(device), wb.to(device)
                out = self._output(self.module_(xb)[:, 0].double())
                if not bool(torch.isfinite(out).all()):
                    raise _diverged(epoch, "the network's outputs are NaN or infinite")
                if fair_training:
                    try:
                        cs = batch_rows.get(row_keys[step])
                        if cs is None:
                            cs = batch_rows[row_keys[step]] = self._build_rows(
                                gb[0], tb, wb if weighted_means else None, device)
                        loss, lam = self._fair_objective(out, cs, tb, wb)
                    except InfeasibleConstraintError as exc:
                        raise self._named(exc) from exc
                    solved.append((cs, lam, out.detach()))
                else:
                    loss = self._loss(out, tb, wb)
                value = float(loss.detach())
                if not math.isfinite(value):  # before the step: it would make the weights NaN
                    raise _diverged(epoch, f"the loss is {value}")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += value * len(xb)
            if fair_training:
                # summed after the epoch, not between the steps: the loop stays lean
                duals, norms = {}, {}
                for cs, lam, _ in solved:
                    if lam is not None:  # (qpth gives no multipliers)
                        # on the stream's scale: the reduction of the row that each one makes
                        # (batches of one composition share their rows: one norm each)
                        scale = norms.get(id(cs))
                        if scale is None:
                            scale = norms[id(cs)] = _streaming.row_norms(cs)
                        for r in np.flatnonzero(lam).tolist():
                            key = cs.keys[r]
                            duals[key] = duals.get(key, 0.0) + lam[r] * scale[r] / len(positions)
                self.dual_init_ = duals
            record = {"epoch": epoch, "train_loss": total / len(train_idx), "train_gap": None,
                      "val_loss": None, "val_gap": None}
            if fair_training:
                # over the epoch's batches, as they came (like the loss): no extra pass; the
                # raw outputs put back in the order of the training samples
                raw = torch.empty(len(train_idx), dtype=torch.float64, device=device)
                raw.index_copy_(0, torch.from_numpy(np.concatenate(positions)).to(device),
                                torch.cat([r for _, _, r in solved]))
                record["train_gap"] = constraint_gap(self.constraint_, raw, gap_inputs[0],
                                                     y_true=gap_inputs[1],
                                                     sample_weight=gap_inputs[2])
            monitored = record["train_loss"]
            if val_idx is not None:
                record["val_loss"], record["val_gap"] = self._evaluate(
                    X[val_idx], t[val_idx], w[val_idx],
                    None if groups is None else groups[val_idx], device)
                monitored = record["val_loss"]
            record["seconds"] = time.perf_counter() - start
            self.history_.append(record)
            if self.verbose:
                gap = "" if not fair_training else f", gap {record['train_gap']:.4f} (before layer)"
                val = "" if val_idx is None else f", val loss {record['val_loss']:.4f}"
                print(f"epoch {epoch}: loss {record['train_loss']:.4f}{gap}{val}, "
                      f"{record['seconds']:.2f}s")
            if monitored < best_loss - self.tol:
                best_loss, stall = monitored, 0
                if val_idx is not None:
                    best_state = copy.deepcopy(self.module_.state_dict())
            else:
                stall += 1
                if stall >= self.n_iter_no_change:
                    break
        else:
            warnings.warn(
                f"{type(self).__name__} ran max_epochs={self.max_epochs} epochs and the "
                f"{'validation' if val_idx is not None else 'training'} loss was still "
                f"improving by more than tol={self.tol}; raise max_epochs, or learning_rate, "
                f"to train to convergence.", ConvergenceWarning, stacklevel=3)
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        self.n_iter_ = len(self.history_)
        self.loss_curve_ = [r["train_loss"] for r in self.history_]
        if not fair_training:
            self.dual_init_ = {}

    def _fair_objective(self, out, cs, target, weight):
        """``(loss, lam)`` of a training batch through the fairness layer: the weighted mean loss
        at the fair outputs plus the distortion penalty, and the projection's multipliers (a
        host array in the order of ``cs.keys``; None from qpth).

        The penalty, ``distortion_penalty * ((out - fair) / _scale)**2`` per sample, is how far
        the network itself is from fair: it teaches the network to need the layer less. Which
        path computes it (the fused compiled objective, or the projection and the torch losses)
        is :func:`~skfair.layer.training_objective`'s decision.
        """
        loss = TrainingLoss(self._losses, self._compiled_loss, self._scale,
                            self.distortion_penalty / self._scale**2)
        return training_objective(out, cs, self.bounds_, self.solver, target, weight, loss)

    def _row_keys(self, order, sizes, strata, target, weight):
        """For every batch of an epoch (the samples ``order`` cut in ``sizes``), what its
        constraint rows depend on, as a hashable value: the bytes of its strata (:meth:`_strata`:
        the groups, and the labels when the constraint's rows split by label), of its labels
        when the constraint reads their values, and of its weights (``None`` when unweighted).
        The strata in the smallest integer type that holds them: a byte per sample instead of
        eight per attribute for the groups (every epoch hashes a key of every batch)."""
        codes = strata.astype(np.min_scalar_type(max(int(strata.max(initial=0)), 0)))
        columns = [codes]
        if self.constraint_.requires_y_true and not self.constraint_.label_cells:
            columns.append(target.numpy())
        if weight is not None:
            columns.append(weight.numpy())
        cuts = np.cumsum(sizes)[:-1]
        split = [np.split(column[order.numpy()], cuts) for column in columns]
        return [tuple(part.tobytes() for part in parts) for parts in zip(*split)]

    def _build_rows(self, groups, target, weight, device):
        """The constraint rows of a training batch."""
        return self.constraint_.build(groups.to(device), epsilon=self.epsilon,
                                      y_true=self._labels_for(target), sample_weight=weight)

    def _named(self, exc):
        """The infeasibility error with the attribute and group named as the user knows them
        (built-in rows are keyed ``(attribute, group code, ...)``; other keys stay as they
        are)."""
        names = self.group_encoder_.group_names()
        key = exc.key
        if not (isinstance(key, tuple) and len(key) >= 2 and key[0] in range(len(names))
                and isinstance(key[1], numbers.Integral)
                and 0 <= key[1] < len(names[key[0]][1])):
            return exc
        attribute, code = key[0], key[1]
        name, values = names[attribute]
        return InfeasibleConstraintError(
            f"The constraint cannot be met within bounds {self.bounds_} for {name}="
            f"{values[code]!r}: {exc}", key=exc.key)

    def _labels_for(self, target):
        """True labels the constraint needs, else None."""
        return target if self.constraint_.requires_y_true else None

    def _validation_split(self, strata, generator):
        order = torch.randperm(len(strata), generator=generator).numpy()
        val = []
        for s in np.unique(strata):
            members = order[strata[order] == s]
            val.append(members[:int(round(self.validation_fraction * len(members)))])
        val = np.sort(np.concatenate(val))
        if len(val) == 0 or len(val) == len(strata):
            raise ValueError(
                f"validation_fraction={self.validation_fraction} leaves no validation or no "
                f"training samples for {len(strata)} samples."
            )
        return np.setdiff1d(np.arange(len(strata)), val), val

    def _evaluate(self, X, target, weight, groups, device):
        """Validation loss and gap of the outputs the estimator would predict."""
        with torch.no_grad():
            self.module_.eval()
            out = self._output(self.module_(X.to(device))[:, 0].double())
            fair = self._fair_outputs(out, None if groups is None else groups.to(device))
            loss = float(self._loss(fair, target.to(device), weight.to(device)))
            gap = None
            if groups is not None:
                gap = constraint_gap(self.constraint_, fair, groups,
                                     y_true=self._labels_for(target), sample_weight=weight)
        return loss, gap

    # ----------------------------------------------------------------------------------------
    # Inference
    def _raw_outputs(self, X):
        """Validated X -> (float64 outputs before the layer, group codes)."""
        check_is_fitted(self)
        features, codes = self._validate_X(X, reset=False)
        out = self._network_outputs(features)
        groups = None if codes is None else self.group_encoder_.constraint_groups(codes)
        return out, groups

    def _network_outputs(self, features):
        """The network's float64 outputs (after the output function, before the layer) for a
        validated feature array; non-finite ones raise :class:`ValueError`.

        The network sees ``NETWORK_CHUNK`` rows at a time: the activations of a chunk stay in
        the processor's cache and are allocated once, where those of a million rows would be
        hundreds of megabytes written and read back per layer (the network treats rows
        independently in eval mode, so the outputs are the same)."""
        device = next(self.module_.parameters()).device
        with torch.no_grad():
            if self.module_.training:  # switching walks every submodule: not per stream batch
                self.module_.eval()
            raw = torch.cat([
                self.module_(torch.tensor(features[start:start + NETWORK_CHUNK],
                                          dtype=torch.float32, device=device))[:, 0]
                for start in range(0, max(len(features), 1), NETWORK_CHUNK)])
            out = self._output(raw.double())
            # The raw outputs too: the classifier's sigmoid maps an infinite logit to 0 or 1.
            finite = torch.isfinite(raw) & torch.isfinite(out)
            if not bool(finite.all()):
                bad = len(out) - int(finite.sum())
                raise ValueError(
                    f"The network's outputs are NaN or infinite for {bad} of the {len(out)} "
                    f"rows of X: its weights or these inputs overflow. Check X's scale, or refit "
                    f"(e.g. with a smaller learning_rate)."
                )
        return out

    def _clip(self, out):
        lo, hi = self.bounds_ if self.bounds_ is not None else (None, None)
        return out if lo is None and hi is None else out.clamp(lo, hi)

    def _new_stream(self, warm):
        return _streaming.PrimalDualStream(
            self.constraint_, self.epsilon, self.bounds_,
            self.eta0 if self.eta0 is not None else _streaming.DEFAULT_ETA0, self.b_tau,
            self.solver, dual_init=self.dual_init_ if warm else None)

    def _streams(self):
        """Whether outputs go through the layer at prediction time (label-free constraints)."""
        return self.constraint_ is not None and not self.constraint_.requires_y_true

    def _fair_outputs(self, out, groups):
        """Stateless inference: chunks of ``inference_batch_size`` through one fresh stream.

        A chunk of at least ``b_tau`` rows is projected exactly; a shorter one takes a
        primal-dual step of the fresh stream, which therefore starts from ``dual_init_`` when
        ``stream_warm_start``.
        """
        if groups is None or not self._streams():
            return self._clip(out)
        stream = self._new_stream(self.stream_warm_start)
        size = self.inference_batch_size or max(len(out), 1)
        chunks = [stream.step(out[i:i + size], groups[i:i + size].to(out.device))
                  for i in range(0, len(out), size)]
        return torch.cat(chunks) if chunks else out

    def _predict_values(self, X):
        return self._predict_values_and_groups(X)[0]

    def _predict_values_and_groups(self, X):
        """The fair outputs (numpy) and the group codes (a tensor, or None) of ``X``."""
        out, groups = self._raw_outputs(X)
        if self._row_by_row(groups):
            return self._offset_outputs(out, groups).cpu().numpy(), groups
        return self._fair_outputs(out, groups).cpu().numpy(), groups

    def _predict_unconstrained(self, X):
        """The network's outputs before the fairness layer, clipped to the bounds."""
        out, _ = self._raw_outputs(X)
        return self._clip(out).cpu().numpy()

    # ----------------------------------------------------------------------------------------
    # Row-by-row inference (inference="individual", see skfair._calibration)
    def calibrate(self, X):
        """Learn the per-group offsets of ``inference="individual"`` on a calibration set.

        ``X`` is projected exactly once, as one batch; the shift the projection gives each
        combination of protected groups in it becomes that combination's fixed offset (and, for
        a classifier with ``guarantee="labels"``, its fair labels a decision threshold per
        combination). Later rows take them one by one: a row's prediction depends on its own
        features only. ``fit`` calibrates on the training data when ``inference="individual"``;
        a held-out set drawn like the data to come gives the population bound of
        :meth:`individual_gap_bound` its meaning. A failed call changes nothing.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)
            Calibration rows, with the protected columns (no targets needed: the constraint
            must be label-free).

        Returns
        -------
        self : object
        """
        out, groups = self._raw_outputs(X)
        if groups is None or not self._streams():
            raise ValueError(
                "calibrate needs protected attributes and a label-free constraint (e.g. "
                "demographic_parity): it learns offsets that rows without labels can take.")
        self.calibration_ = self._calibration(out, groups)
        return self

    def individual_gap_bound(self, delta=0.05):
        """A bound on the population gap of row-by-row predictions, from the calibration set.

        With probability at least ``1 - delta`` over the draw of the calibration rows (drawn
        independently, like the rows to come), the gap of the offset predictions on the whole
        population is at most ``epsilon + d_u + d_v`` for the worst pair of groups, ``d_g =
        w m_g sqrt(ln(2 M / delta) / (2 n_g))`` with ``n_g`` the group's calibration rows,
        ``m_g`` its combinations of groups, ``M`` their total and ``w`` the bounds' width (1 for
        the selection rates of a classifier's labels under ``guarantee="labels"``). A batch of
        new rows adds its own sampling error. See :mod:`skfair._calibration`.

        Parameters
        ----------
        delta : float in (0, 1), default=0.05

        Returns
        -------
        bound : float
        """
        check_is_fitted(self, "calibration_")
        if not 0 < delta < 1:
            raise ValueError(f"delta must lie in (0, 1); got {delta!r}.")
        width = 1.0 if self.calibration_.thresholds is not None else (
            math.inf if self.bounds_ is None else self.bounds_[1] - self.bounds_[0])
        return _calibration.gap_bound(self.calibration_, self.epsilon, delta, width)

    def _row_by_row(self, groups):
        """Whether predictions take the calibrated offsets (``inference="individual"``)."""
        if self.inference != "individual" or groups is None or not self._streams():
            return False
        if not hasattr(self, "calibration_"):
            raise NotFittedError(
                f"inference='individual' needs offsets from a calibration set: call "
                f"calibrate(X), or refit, since this {type(self).__name__} was fitted with "
                f"inference={self.inference!r} set afterwards.")
        return True

    def _calibration(self, out, groups):
        return _calibration.calibrate(out, groups, self.constraint_, self.epsilon, self.bounds_,
                                      self.solver, self._calibration_labels())

    def _calibration_labels(self):
        """The fair labels of a calibration batch (a function of its offset scores and group
        codes), or None when the estimator does not decide labels under a constraint."""
        return None

    def _cells(self, groups):
        """The calibration cell of every row of ``groups``."""
        names = self.group_encoder_.group_names()
        return _calibration.cell_index(
            self.calibration_, groups,
            lambda row: ", ".join(f"{name}={values[code]!r}"
                                  for (name, values), code in zip(names, row)))

    def _offset_outputs(self, out, groups):
        return _calibration.offset_outputs(self.calibration_, out, self._cells(groups),
                                           self.bounds_)

    # ----------------------------------------------------------------------------------------
    # Streaming
    def reset_stream(self):
        """Start a new stream for :meth:`partial_predict`.

        The multipliers start from ``dual_init_`` (the average multipliers of the last training
        epoch's projections) when ``stream_warm_start`` is True, else from zero.

        Returns
        -------
        self : object
        """
        check_is_fitted(self)
        stream = self._start_stream()  # validates the parameters before anything changes
        self._end_streams()
        self.stream_ = stream
        return self

    #: the fitted attributes that hold a stream's state (ended by a refit and reset_stream)
    _stream_attributes = ("stream_",)

    def _end_streams(self):
        for name in self._stream_attributes:
            self.__dict__.pop(name, None)

    def _start_stream(self):
        """A new stream for :meth:`partial_predict`, or None when outputs do not stream."""
        self._validate_params()  # set_params may have changed what the stream is built from
        return self._new_stream(self.stream_warm_start) if self._streams() else None

    def _partial_values(self, X):
        return self._partial_values_and_groups(X)[0]

    def _partial_values_and_groups(self, X):
        """The next stream batch's fair outputs (numpy) and group codes (a tensor, or None)."""
        out, groups = self._raw_outputs(X)  # validates everything before any state changes
        if len(out) == 0:
            return out.cpu().numpy(), groups
        if self._row_by_row(groups):  # no stream: every row on its own
            return self._offset_outputs(out, groups).cpu().numpy(), groups
        stream = self.stream_ if hasattr(self, "stream_") else self._start_stream()
        values = self._clip(out) if stream is None else stream.step(out, groups.to(out.device))
        self.stream_ = stream  # a first stream is kept once its first step succeeded
        return values.cpu().numpy(), groups

    def stream_stats(self):
        """Statistics of the current stream.

        Returns
        -------
        stats : dict
            ``weighted_avg_fairness_gap`` (the largest sample-weighted average over the stream of
            a constraint row's value, e.g. ``mean_u - mean_v``: the guaranteed quantity),
            ``bound`` (its proven excess over epsilon, ``lambda_max / (alpha_T * N)``),
            ``pooled_fairness_gap`` and ``per_attribute_gaps`` (the gap of all streamed outputs
            pooled), ``mean_batch_gap`` and ``mean_batch_violation`` (each batch's own gap, and its
            excess over epsilon, weighted by batch size), ``reference_drift``, ``n_batches``,
            ``n_steps`` (primal-dual steps), ``n_samples``, ``lambda_max``, ``epsilon``.
            See :mod:`skfair._streaming` for the guarantee.
        """
        check_is_fitted(self)
        if self.inference == "individual":
            raise ValueError("inference='individual' predicts every row on its own, with "
                             "offsets from a calibration set: there is no stream.")
        if not hasattr(self, "stream_"):
            raise ValueError("No stream yet: call partial_predict or reset_stream first.")
        if self.stream_ is None:
            raise ValueError(
                "This estimator has no fairness stream: it has no protected attributes, or its "
                "constraint needs true labels, which a prediction stream does not have."
            )
        return self.stream_.stats()

    # ----------------------------------------------------------------------------------------
    # Persistence: torch state on the CPU so that any machine can unpickle the estimator.
    def __getstate__(self):
        state = super().__getstate__()
        if "module_" in state:
            state["module_"] = copy.deepcopy(self.module_).cpu()
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        device = torch.device(getattr(self, "device", "cpu"))
        if "module_" in state and (device.type == "cpu" or _available(device)):
            self.module_.to(device)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


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


def _weighted_mean(values, weight):
    return (weight * values).sum() / weight.sum()


def _numeric(convert):
    """``convert()``, the conversion of the columns of X that are not protected to float64,
    with the error that says what to do when one of them is not numeric."""
    try:
        return convert()
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"The columns of X that are not protected must be numeric ({exc}); encode "
            f"categorical features first, e.g. with a ColumnTransformer and OneHotEncoder."
        ) from None


def _available(device):
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return True
