"""What the two fair neural estimators share: parameters, fit, prediction and streams.

The data flow of a fit: X -> :class:`~skfair._validation.InputSplitter` (network features and
group codes) -> the network -> :mod:`skfair._training` (constraint rows of every batch, the
projection, the loss); of a prediction: X -> splitter -> network -> the fairness layer, exact
for a batch of at least ``b_tau`` rows, else a step of the stream (:mod:`skfair._streaming`),
or per-row offsets (:mod:`skfair._calibration`).
"""

import copy
import math
import numbers
import os
import weakref
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, _fit_context
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    InvalidParameterError,
    StrOptions,
)
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from . import _calibration, _persistence, _streaming, _training
from ._bounds import Bounds
from ._host import device_tensor
from ._network import ACTIVATIONS, check_module, make_mlp, outputs
from ._validation import GroupEncoder, InputSplitter, check_dense_2d, check_float32
from .constraints import AffineConstraint, get_constraint
from .layer import SOLVERS, project


#: rows the network is evaluated on at a time at prediction (see ``_network_outputs``)
NETWORK_CHUNK = 8192

#: weak references ``(network, its first parameter)`` by ``id`` of the network (whatever its
#: equality), for ``BaseFairNeural._network_device``; an entry goes with its network
_FIRST_PARAMETER: dict[int, tuple] = {}

#: the estimator a method returns itself as (``typing.Self`` needs Python 3.11)
Self = TypeVar("Self", bound="BaseFairNeural")


class BaseFairNeural(BaseEstimator):
    """Base class of :class:`FairNeuralClassifier` and :class:`FairNeuralRegressor`."""

    _parameter_constraints = {
        "protected_attributes": [list, tuple, str, numbers.Integral, None],
        "exclude_protected": ["boolean"],
        # each estimator lists the names it accepts (StrOptions)
        "fairness": [AffineConstraint, str],
        "epsilon": [Interval(numbers.Real, 0, None, closed="left")],
        "intersectional": ["boolean"],
        "handle_unknown": [StrOptions({"error", "new_group"})],
        "solver": [StrOptions(set(SOLVERS))],
        "b_tau": [Interval(numbers.Integral, 1, None, closed="left")],
        "eta0": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "stream_warm_start": ["boolean"],
        "distortion_penalty": [Interval(numbers.Real, 0, None, closed="left")],
        "inference": [StrOptions({"batch", "individual"})],
        "hidden_layer_sizes": [tuple, list],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "module": [HasMethods(["forward"]), callable, None],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "learning_rate_schedule": [StrOptions({"constant", "adaptive"})],
        "optimizer": [StrOptions({"adam", "adamw", "sgd"})],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "device": [str, torch.device],
        "n_jobs": [Interval(numbers.Integral, None, -1, closed="right"),
                   Interval(numbers.Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }

    def __init__(self, *, protected_attributes=None, exclude_protected=False,
                 fairness="demographic_parity", epsilon=0.05, intersectional=False,
                 handle_unknown="error",
                 solver="exact", b_tau=100, eta0=None, stream_warm_start=True,
                 distortion_penalty=10.0, inference="batch",
                 hidden_layer_sizes=(64, 64), activation="relu",
                 module=None, batch_size=256, max_epochs=100, learning_rate=1e-3,
                 learning_rate_schedule="constant", optimizer="adam",
                 weight_decay=0.0, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, warm_start=False, device="cpu", n_jobs=None,
                 verbose=0, random_state=None):
        self.protected_attributes = protected_attributes
        self.exclude_protected = exclude_protected
        self.fairness = fairness
        self.epsilon = epsilon
        self.intersectional = intersectional
        self.handle_unknown = handle_unknown
        self.solver = solver
        self.b_tau = b_tau
        self.eta0 = eta0
        self.stream_warm_start = stream_warm_start
        self.distortion_penalty = distortion_penalty
        self.inference = inference
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.module = module
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.learning_rate = learning_rate
        self.learning_rate_schedule = learning_rate_schedule
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.device = device
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.random_state = random_state

    # ----------------------------------------------------------------------------------------
    # Hooks of the subclasses
    @abstractmethod
    def _encode_targets(self, y, reset, classes=None):
        """Validated targets as a float64 array (classifier: 0/1, its classes learned from
        ``classes`` or y when ``reset``)."""

    @abstractmethod
    def _output(self, raw):
        """Network output (n,) -> values in the units of the fair outputs."""

    @abstractmethod
    def _sample_losses(self, y_fair, target):
        """Loss of every sample of a batch."""

    def _mean_loss(self, y_fair, target, weight):
        """Weighted mean loss of a batch."""
        return _training.weighted_mean(self._sample_losses(y_fair, target), weight)

    def _loss_weights(self, target, weight):
        """The weights of the samples in the loss, when they differ from ``weight`` (the
        sample weights, which also weight the constraint's group means); else None."""
        return None

    #: unit of the outputs in the distortion penalty
    _distortion_unit = 1.0

    #: :func:`skfair._kernels.objective`'s version of :meth:`_sample_losses` (the fair
    #: training step)
    _compiled_loss: int | None = None

    @abstractmethod
    def _fit_bounds(self, target):
        """Bounds of the outputs, fixed in fit."""

    # ----------------------------------------------------------------------------------------
    # Validation
    def _validate_X(self, X, reset, known_groups=None, handle_unknown="error"):
        """X -> ``(features, codes)``: the network's inputs (a row-major float64 array) and
        the protected group codes (a LongTensor, or None without protected attributes), by the
        :class:`~skfair._validation.InputSplitter` fitted when ``reset`` (on the groups of X
        and ``known_groups``); groups unseen in fit as ``handle_unknown`` says."""
        if self.protected_attributes is None:
            # Row-major: a DataFrame converts to a column-major array, whose tensor keeps those
            # strides, and gathering a batch's rows from it is several times slower.
            features = validate_data(self, X, reset=reset, dtype=np.float64, order="C")
            check_float32(features, range(self.n_features_in_),
                          getattr(self, "feature_names_in_", None))
            return features, None
        check_dense_2d(X)
        if reset or not self._has_fitted_columns(X):
            validate_data(self, X, reset=reset, skip_check_array=True)
        if not reset:
            return self.splitter_.transform(X, handle_unknown)
        self.splitter_ = InputSplitter(self.protected_attributes, self.exclude_protected,
                                       self.intersectional)
        return self.splitter_.fit_transform(X, getattr(self, "feature_names_in_", None),
                                            self.n_features_in_, known_groups)

    def _has_fitted_columns(self, X):
        """Whether sklearn's check of X's columns would pass, found directly (that check
        costs most of a millisecond per batch of a stream): a DataFrame with the column names
        of fit (compared as lists, or the very Index found equal before: pandas' element-wise
        comparison costs tens of microseconds), or, after an array, an array of as many
        columns."""
        names = getattr(self, "feature_names_in_", None)
        if isinstance(X, pd.DataFrame) and names is not None:
            return self.splitter_.has_columns(X.columns)
        return names is None and isinstance(X, np.ndarray) and X.shape[1] == self.n_features_in_

    @property
    def group_encoder_(self) -> GroupEncoder:
        """The groups of every protected attribute (``group_encoder_.categories_``)."""
        return self.splitter_.encoder

    @property
    def protected_indices_(self) -> list[int]:
        """Positions of the protected columns in X."""
        return self.splitter_.indices

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

    # ----------------------------------------------------------------------------------------
    # Training
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self: Self, X: ArrayLike | pd.DataFrame, y: ArrayLike,
            sample_weight: ArrayLike | None = None) -> Self:
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
        device, constraint = self._check_fit_arguments(y)
        return self._transaction(self._fit, self.warm_start, X, y, sample_weight, constraint,
                                 device)

    def _check_fit_arguments(self, y):
        """``(device, constraint)`` of a fit or partial_fit, whose arguments are checked."""
        device = self._check_device()
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        constraint = get_constraint(self.fairness)
        if self.inference == "individual" and constraint.requires_y_true:
            raise ValueError(
                f"inference='individual' applies offsets learned once to every later row, and "
                f"{constraint!r} needs true labels, which rows at prediction time do not have; "
                f"use a label-free constraint (e.g. demographic_parity) or inference='batch'.")
        return device, constraint

    def _transaction(self, train, in_place, *args):
        """``train(*args, previous)`` with torch's threads set, the estimator put back as it
        was if it raises: validating X and y records what they define (feature names, groups,
        classes), and training changes a network ``in_place`` (warm start, partial_fit)."""
        previous = self._fitted_state(in_place)
        try:
            with self._torch_threads():
                train(*args, previous)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(previous)
            raise
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self: Self, X: ArrayLike | pd.DataFrame, y: ArrayLike,
                    sample_weight: ArrayLike | None = None,
                    groups: Sequence[ArrayLike] | None = None) -> Self:
        """Train on one chunk of the data: one epoch over ``(X, y)`` through the fairness layer.

        For data larger than memory, or arriving over time. The first call on an unfitted
        estimator fixes what must be known up front: the protected groups
        (those of ``X``, plus ``groups``) and, for a classifier, the classes; the regressor's
        target scaling and inferred bounds come from the first chunk too (pass ``bounds`` to
        fix them). Later calls continue the same network and optimizer (after :meth:`fit`, the
        fitted network with a fresh optimizer). Every chunk's batches
        are projected exactly as in :meth:`fit`, so each training batch meets the constraint;
        what the trained network does elsewhere is, as after ``fit``, what prediction's layer
        corrects. A failed call changes nothing; ``early_stopping`` is not available here.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None
        groups : list of array-like, default=None
            First call only: per protected attribute (in the order of
            ``protected_attributes``), every value it can take, when the first chunk may not
            hold them all.

        Returns
        -------
        self : object
        """
        return self._partial_fit(X, y, sample_weight, groups, None)

    def _partial_fit(self, X, y, sample_weight, groups, classes):
        device, constraint = self._check_fit_arguments(y)
        if self.early_stopping:
            raise ValueError("partial_fit trains on the chunks it is given: early_stopping=True "
                             "needs a validation split of the whole data; use fit.")
        first = "module_" not in self.__dict__
        if not first:
            self._check_fixed(groups, classes)
        return self._transaction(self._fit_chunk, True, X, y, sample_weight, constraint, device,
                                 (groups, classes) if first else None)

    def _check_fixed(self, groups, classes):
        """Later partial_fit calls may repeat the first call's ``groups`` and ``classes`` (as
        incremental wrappers do), not change them."""
        if classes is not None and not np.array_equal(np.unique(classes),
                                                      getattr(self, "classes_", None)):
            raise ValueError(f"classes={list(classes)} differ from classes_ "
                             f"{list(getattr(self, 'classes_', []))}, fixed by the first call "
                             f"to partial_fit.")
        if groups is None:
            return
        encoder = self.splitter_.encoder if "splitter_" in self.__dict__ else None
        known = [] if encoder is None else encoder.categories_
        if len(groups) != len(known) or any(set(values) - set(categories)
                                            for values, categories in zip(groups, known)):
            raise ValueError("groups differ from the groups fixed by the first call to "
                             "partial_fit; refit (or start over) to change them.")

    def _fit_chunk(self, X, y, sample_weight, constraint, device, known, previous):
        """One partial_fit call: set up from ``known`` ``(groups, classes)`` on the first
        call (``known`` is None on later ones), then one epoch."""
        if known is not None:
            features, codes, target, weight = self._validated(X, y, sample_weight, True,
                                                              *known)
            self._start(features, codes, target, constraint, device, warm=False)
        else:
            features, codes, target, weight = self._validated(X, y, sample_weight, False)
        generator = torch.Generator().manual_seed(self._seed + len(self.history_))
        data = _training.TrainingData.of(features, target, weight, self._groups(codes),
                                         self.constraint_, self._loss_weights(target, weight))
        self._optimizer_state = _training.train_chunk(self, data, generator, device,
                                                      getattr(self, "_optimizer_state", None))
        self._end_training(features, codes)

    def _fitted_state(self, in_place):
        """The attributes as they are, to put back if fit fails: fit replaces fitted attributes
        rather than changing them, except a network trained ``in_place`` (warm start, or
        partial_fit: deep-copied, with the optimizer's state) and the history (appended to)."""
        state = dict(self.__dict__)
        if in_place and "module_" in state:
            state["module_"] = copy.deepcopy(state["module_"])
            if "_optimizer_state" in state:
                state["_optimizer_state"] = copy.deepcopy(state["_optimizer_state"])
        if "history_" in state:
            state["history_"] = list(state["history_"])
        return state

    def _fit(self, X, y, sample_weight, constraint, device, previous):
        features, codes, target, weight = self._validated(X, y, sample_weight, reset=True)
        warm = self.warm_start and "module_" in previous
        inputs = previous.get("_n_network_inputs")
        if warm and inputs is not None and inputs != features.shape[1]:
            raise ValueError(
                f"warm_start=True continues training the fitted network, which takes {inputs} "
                f"inputs; this X gives {features.shape[1]} (its columns, their protected groups "
                f"or exclude_protected changed). Fit with warm_start=False to train a new one."
            )
        self._start(features, codes, target, constraint, device, warm)
        generator = torch.Generator().manual_seed(self._seed)
        data = _training.TrainingData.of(features, target, weight, self._groups(codes),
                                         self.constraint_, self._loss_weights(target, weight))
        _training.train(self, data, generator, device)
        self.__dict__.pop("_optimizer_state", None)  # a later partial_fit starts its own
        self._end_training(features, codes)

    def _validated(self, X, y, sample_weight, reset, groups=None, classes=None):
        """``(features, codes, target, weight)`` of a fit's arguments; with ``reset``, the
        columns, groups (those of X and ``groups``) and classes (``classes``, else y's) are
        learned."""
        features, codes = self._validate_X(X, reset=reset, known_groups=groups)
        target = self._encode_targets(y, reset=reset, classes=classes)
        if len(target) != len(features):
            raise ValueError(
                f"X and y have inconsistent numbers of samples: {len(features)} and "
                f"{len(target)}."
            )
        weight = _check_sample_weight(sample_weight, features, dtype=np.float64,
                                      ensure_non_negative=True)
        return features, codes, target, weight

    def _start(self, features, codes, target, constraint, device, warm):
        """What a fit fixes before training: the constraint, the bounds, the seed and, unless
        ``warm``, a new network and history."""
        self._end_streams()
        self.constraint_ = constraint if codes is not None else None
        self.bounds_ = self._fit_bounds(target)
        self._seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if not warm:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._seed)
                self.module_ = self._build_module(features.shape[1])
            self.history_ = []
        self._n_network_inputs = features.shape[1]
        self.module_.to(device)
        _FIRST_PARAMETER.pop(id(self.module_), None)  # (a move may make new parameters)
        check_module(self.module_, features.shape[1], self._inputs_description(codes))

    def _groups(self, codes):
        """The groups the constraint compares, from the attributes' codes (None without)."""
        return None if codes is None else self.splitter_.encoder.constraint_groups(codes)

    def _end_training(self, features, codes):
        """The fitted attributes that follow the history, and a new calibration."""
        self.n_iter_ = len(self.history_)
        self.loss_curve_ = [r["train_loss"] + (r["train_penalty"] or 0.0) for r in self.history_]
        self.__dict__.pop("calibration_", None)
        if self.inference == "individual" and codes is not None:
            self.calibration_ = self._calibration(self._network_outputs(features),
                                                  self._groups(codes))

    def _inputs_description(self, codes):
        """Where the network's inputs come from, for the errors of a module that does not take
        them."""
        if codes is None:
            return f"the {self.n_features_in_} columns of X"
        n_rest = len(self.splitter_.feature_indices)
        described = f"the {n_rest} columns of X that are not protected"
        if self.exclude_protected:
            return described + "; the protected columns are excluded"
        n_encoded = self._n_network_inputs - n_rest
        return (f"{described}, then {n_encoded} encoding the protected attributes: a 0/1 "
                f"column for a binary one, one-hot columns otherwise")

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

    def _labels_for(self, target):
        """True labels the constraint needs, else None."""
        return target if self.constraint_.requires_y_true else None

    # ----------------------------------------------------------------------------------------
    # Inference
    def _raw_outputs(self, X):
        """Validated X -> (float64 outputs before the layer, group codes)."""
        if not hasattr(self, "module_"):  # sklearn's check costs more than the network
            check_is_fitted(self)
        features, codes = self._validate_X(X, reset=False, handle_unknown=self.handle_unknown)
        with self._torch_threads():
            out = self._network_outputs(features)
        return out, self._groups(codes)

    def _torch_threads(self):
        """A context in which torch's intra-op threads are ``n_jobs`` (``None``: 1; negative:
        all processors but ``-1 - n_jobs``), put back after."""
        n_jobs = 1 if self.n_jobs is None else int(self.n_jobs)
        if n_jobs == 0:
            raise InvalidParameterError(
                f"n_jobs must be None, a positive number of threads or a negative count from "
                f"all processors (-1: all); got {self.n_jobs!r}.")
        return _TorchThreads(n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs))

    def _network_outputs(self, features):
        """The network's float64 outputs (after the output function, before the layer) for a
        validated feature array; non-finite ones raise :class:`ValueError`.

        The network sees ``NETWORK_CHUNK`` rows at a time: the activations of a chunk stay in
        the processor's cache and are allocated once, where those of a million rows would be
        hundreds of megabytes written and read back per layer (the network treats rows
        independently in eval mode, so the outputs are the same)."""
        module, device = self.module_, self._network_device()
        # Inference mode: the outputs feed no gradient, and their tensors skip the autograd
        # bookkeeping that no_grad keeps (their version counters). Only skfair's prediction
        # code, which changes none in place, sees them.
        with torch.inference_mode():
            if module.training:  # switching walks every submodule: not per stream batch
                module.eval()
            chunks = [outputs(module, device_tensor(
                features[start:start + NETWORK_CHUNK].astype(np.float32), device))
                for start in range(0, max(len(features), 1), NETWORK_CHUNK)]
            raw = (chunks[0] if len(chunks) == 1 else torch.cat(chunks)).double()
            out = self._output(raw)
            # The raw outputs too: the classifier's sigmoid maps an infinite logit to 0 or 1.
            # Their dot product, one operation, is finite unless one of them is not (or it
            # overflows: then they are counted).
            if not math.isfinite(raw.dot(out)):
                bad = len(out) - int((torch.isfinite(raw) & torch.isfinite(out)).sum())
                if bad:
                    raise ValueError(
                        f"The network's outputs are NaN or infinite for {bad} of the "
                        f"{len(out)} rows of X: its weights or these inputs overflow. Check X's "
                        f"scale, or refit (e.g. with a smaller learning_rate)."
                    )
        return out

    def _network_device(self):
        """The device of the network's first parameter, which is found once per network:
        walking the submodules for it costs as much as a layer of a stream's network pass.
        Moving a network to another processor moves its parameters' data (the parameter asked
        is the network's); a move that makes new parameters (to the meta device, say) drops the
        old ones, and with them the one found."""
        module = self.module_
        found = _FIRST_PARAMETER.get(id(module))
        parameter = None if found is None or found[0]() is not module else found[1]()
        if parameter is None:
            parameter = next(module.parameters())
            key = id(module)
            _FIRST_PARAMETER[key] = (
                weakref.ref(module, lambda _: _FIRST_PARAMETER.pop(key, None)),
                weakref.ref(parameter))
        return parameter.device

    def _clip(self, out):
        return Bounds.of(self.bounds_).clip(out)

    def _new_stream(self, warm):
        return _streaming.PrimalDualStream(
            self.constraint_, self.epsilon, self.bounds_,
            self.eta0 if self.eta0 is not None else _streaming.DEFAULT_ETA0, self.b_tau,
            self.solver, dual_init=self.dual_init_ if warm else None)

    def _streams_outputs(self):
        """Whether outputs go through the layer at prediction time (label-free constraints)."""
        return self.constraint_ is not None and not self.constraint_.requires_y_true

    def _prediction_regime(self, n_rows, groups):
        """How :meth:`_fair_outputs` puts a batch of ``n_rows`` rows through the layer:
        ``"exact"``, one exact projection (at least ``b_tau`` rows); ``"stream"``, one step of
        a new stream (fewer rows); ``"unconstrained"``, not at all (no protected attributes, a
        constraint that needs true labels, or no rows: the outputs are clipped)."""
        if groups is None or not self._streams_outputs() or n_rows == 0:
            return "unconstrained"
        return "exact" if n_rows >= self.b_tau else "stream"

    def _fair_outputs(self, out, groups):
        """Stateless inference: the outputs as the first batch of a fresh stream.

        A batch of at least ``b_tau`` rows is projected exactly; a shorter one takes a
        primal-dual step, from ``dual_init_`` when ``stream_warm_start``.
        """
        if self._prediction_regime(len(out), groups) == "unconstrained":
            return self._clip(out)
        return self._new_stream(self.stream_warm_start).step(out, groups.to(out.device))

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

    def _audit_values(self, X, y):
        """The fair outputs of a labelled batch: one exact projection with the constraint given
        the batch's true labels (label-dependent constraints included), whatever its size."""
        out, groups = self._raw_outputs(X)
        target = self._encode_targets(y, reset=False)
        if len(target) != len(out):
            raise ValueError(f"X and y have inconsistent numbers of samples: {len(out)} and "
                             f"{len(target)}.")
        if groups is None:
            return self._clip(out).cpu().numpy()
        labels = torch.tensor(target, dtype=torch.float64, device=out.device)
        rows = self.constraint_.build(groups.to(out.device), epsilon=self.epsilon,
                                      y_true=self._labels_for(labels))
        return project(out, rows, self.bounds_, self.solver)[0].detach().cpu().numpy()

    # ----------------------------------------------------------------------------------------
    # Row-by-row inference (inference="individual", see skfair._calibration)
    def calibrate(self: Self, X: ArrayLike | pd.DataFrame) -> Self:
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
        if groups is None or not self._streams_outputs():
            raise ValueError(
                "calibrate needs protected attributes and a label-free constraint (e.g. "
                "demographic_parity): it learns offsets that rows without labels can take.")
        self.calibration_ = self._calibration(out, groups)
        return self

    def individual_gap_bound(self, delta: float = 0.05) -> float:
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
        if self.inference != "individual" or groups is None or not self._streams_outputs():
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
        return _calibration.cell_index(self.calibration_, groups,
                                       self.splitter_.encoder.describe)

    def _offset_outputs(self, out, groups):
        return _calibration.offset_outputs(self.calibration_, out, self._cells(groups),
                                           self.bounds_)

    # ----------------------------------------------------------------------------------------
    # Streaming
    def reset_stream(self: Self) -> Self:
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
    _stream_attributes: tuple[str, ...] = ("stream_",)

    def _end_streams(self):
        for name in self._stream_attributes:
            self.__dict__.pop(name, None)

    def _start_stream(self):
        """A new stream for :meth:`partial_predict`, or None when outputs do not stream."""
        self._validate_params()  # set_params may have changed what the stream is built from
        return self._new_stream(self.stream_warm_start) if self._streams_outputs() else None

    def _partial_values(self, X):
        return self._partial_values_and_groups(X)[0]

    def _partial_values_and_groups(self, X):
        """The next stream batch's fair outputs (numpy) and group codes (a tensor, or None)."""
        out, groups = self._raw_outputs(X)  # validates everything before any state changes
        if out.shape[0] == 0:
            return out.cpu().numpy(), groups
        if self._row_by_row(groups):  # no stream: every row on its own
            return self._offset_outputs(out, groups).cpu().numpy(), groups
        stream = self.stream_ if hasattr(self, "stream_") else self._start_stream()
        values = self._clip(out) if stream is None else stream.step(out, groups.to(out.device))
        self.stream_ = stream  # a first stream is kept once its first step succeeded
        return values.cpu().numpy(), groups

    def stream_stats(self) -> dict[str, Any]:
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
    # Persistence: torch state on the CPU so that any machine can load the estimator, in the
    # types that skops stores too (skfair._persistence).
    def __getstate__(self):
        # a copy: object.__getstate__ gives the instance's own dict
        state = dict(super().__getstate__())
        if "module_" in state:
            state["module_"] = copy.deepcopy(self.module_).cpu()
        return _persistence.plain(state)

    def __setstate__(self, state):
        super().__setstate__(_persistence.restored(state))
        device = torch.device(getattr(self, "device", "cpu"))
        if "module_" in state and (device.type == "cpu" or _available(device)):
            self.module_.to(device)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class _TorchThreads:
    """torch's intra-op threads set to ``threads`` for the duration of a ``with``, then put back
    (a class: entering a generator's context costs more, and every stream batch enters one)."""

    def __init__(self, threads):
        self.threads = threads

    def __enter__(self):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc_info):
        torch.set_num_threads(self.previous)


def _available(device):
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return True
