"""FairNeuralRegressor: a neural regressor whose predictions are fair by construction."""

import numbers
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from sklearn.base import RegressorMixin
from sklearn.utils._param_validation import InvalidParameterError, Options, StrOptions
from sklearn.utils.validation import check_array, column_or_1d

from . import _kernels
from ._base import BaseFairNeural
from .constraints import AffineConstraint

__all__ = ["FairNeuralRegressor"]

#: share of the training targets' range added on each side when bounds are inferred
BOUNDS_MARGIN = 0.1


class FairNeuralRegressor(RegressorMixin, BaseFairNeural):
    """Neural network regressor trained through a fairness layer.

    The network's predictions are projected onto the predictions whose group statistics differ
    by at most ``epsilon`` (the closest in Euclidean distance, within ``bounds``), and the network
    is trained with squared error on the projected predictions. Targets are standardised inside
    the network; the projection acts in the targets' own units, so ``epsilon`` is in those units.

    At prediction time a batch of at least ``b_tau`` rows is projected exactly; a shorter one
    takes a step of the online primal-dual algorithm (see :meth:`partial_predict`).
    ``mean_residual`` needs true targets, so it is enforced in training only, and predictions
    are the trained network's, clipped to the bounds.

    Parameters
    ----------
    protected_attributes : list of str or int, str, int, or None, default=None
        Protected columns of ``X``: names (for DataFrames; ``"sex"`` also matches a
        ``ColumnTransformer`` output column such as ``"remainder__sex"``) or integer positions.
        Values may be numbers, strings or categories; each attribute needs two or more values.
        ``None``: no fairness layer, a plain network.
    exclude_protected : bool, default=False
        Whether to keep the protected attributes out of the network's inputs. By default they are
        inputs too (a 0/1 column for a binary attribute, one-hot columns otherwise).
    fairness : {"demographic_parity", "mean_residual"} or AffineConstraint, \
            default="demographic_parity"
        ``"demographic_parity"``: the groups' mean predictions differ by at most ``epsilon`` (mean
        prediction parity). ``"mean_residual"``: every group's mean residual is within ``epsilon``
        of zero.
    epsilon : float, default=0.05
        Largest allowed difference, in the targets' units.
    intersectional : bool, default=False
        Constrain every combination of the protected attributes' values instead of each attribute
        separately.
    handle_unknown : {"error", "new_group"}, default="error"
        What prediction does with a protected attribute's value not seen in fit (a rare group
        missing from a cross-validation training fold, a new category). ``"error"``: raise
        :class:`ValueError`. ``"new_group"``: all of an attribute's unseen values form one
        extra group of that attribute (with ``intersectional=True``, extra combinations), the
        same in every batch and stream, which the constraint covers like any group (demographic
        parity: in a batch of at least ``b_tau`` rows its mean is within ``epsilon`` of every
        other group's). As a network input it is the mean of the known groups' encodings (0.5
        in a binary attribute's 0/1 column, ``1 / k`` in each of ``k`` one-hot columns). A
        warning names the attributes and their unseen values. ``partial_fit`` raises on them
        whatever this says (declare them with its ``groups``).
    solver : {"exact", "qpth"}, default="exact"
        Projection solver: ``"exact"``, the package's own (certified by the guarantee check), or
        ``"qpth"``, the reference implementation (``O(n^2)`` memory; falls back to the exact
        solver when its result fails the check). See :class:`~skfair.FairnessLayer`.
    b_tau : int, default=100
        Batches with at least this many rows are projected exactly; shorter ones stream.
    eta0 : float, default=None
        Dual step size of the streaming regime (``None``: 0.1).
    stream_warm_start : bool, default=True
        Start streams from the multipliers recorded in fit (``dual_init_``).
    distortion_penalty : float, default=10.0
        Weight of the mean squared distance (in units of the targets' standard deviation)
        between the network's predictions and their fair projection, added to the loss: it
        teaches the network to be fair by itself.
    inference : {"batch", "individual"}, default="batch"
        ``"batch"``: predictions are fair per batch, so a row's prediction depends on the rows
        predicted with it. ``"individual"``: every row is predicted on its own, from fixed
        per-group offsets that one exact projection of a calibration set gave each combination
        of protected groups (:meth:`calibrate`; ``fit`` calibrates on the training data); see
        :class:`FairNeuralClassifier`.
    bounds : None, False or tuple (lo, hi), default=None
        Box on the predictions. ``None`` infers it from the training targets,
        ``[min - 0.1 r, max + 0.1 r]`` with ``r`` their range; ``False`` leaves predictions
        unbounded; a pair of finite numbers ``lo < hi`` sets it explicitly.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Widths (positive integers) of the hidden layers of the default multilayer perceptron.
    activation : {"relu", "tanh", "logistic", "gelu"}, default="relu"
        Its activation.
    module : torch.nn.Module or callable, default=None
        A network to use instead of the MLP: a module mapping ``(n, n_inputs)`` float32 inputs to
        one output per row, shape ``(n,)`` or ``(n, 1)``, in units of the standardised targets
        (it is copied in fit), or a callable ``n_inputs -> module`` (``n_inputs`` as for
        :class:`FairNeuralClassifier`). Its floating point parameters must be float32; ``fit``
        checks this contract and raises :class:`ValueError` naming what does not match.
    batch_size : int, default=256
        Training mini-batch size; batches are stratified by group (see
        :class:`FairNeuralClassifier`).
    max_epochs : int, default=100
        Maximum number of passes over the data; a fit that runs them all while its loss still
        improves by more than ``tol`` warns with :class:`~sklearn.exceptions.ConvergenceWarning`.
    learning_rate : float, default=1e-3
        The optimizer's (initial) learning rate.
    learning_rate_schedule : {"constant", "adaptive"}, default="constant"
        ``"adaptive"``, as scikit-learn's MLP: the learning rate is divided by 5 each time two
        epochs in a row fail to improve the monitored loss (training loss, or validation loss
        with early stopping) by at least ``tol``. Applies to ``fit``; ``partial_fit`` keeps
        the rate.
    optimizer : {"adam", "adamw", "sgd"}, default="adam"
        ``"adamw"``: Adam with decoupled ``weight_decay``; ``"sgd"``: with Nesterov momentum
        0.9 (scikit-learn MLP's).
    weight_decay : float, default=0.0
        The optimizer's weight decay.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data (stratified) and stop when its loss stops
        improving; the best weights are kept.
    validation_fraction : float, default=0.1
        Share of the data held out for early stopping.
    n_iter_no_change : int, default=10
        Epochs without an improvement of at least ``tol`` (training loss, or validation loss with
        early stopping) before training stops.
    tol : float, default=1e-4
        Minimal improvement.
    warm_start : bool, default=False
        Continue training the fitted network in the next ``fit``.
    device : str or torch.device, default="cpu"
        Where the network trains and predicts; fit raises :class:`ValueError` if this machine
        does not have it.
    n_jobs : int or None, default=None
        Threads torch uses for the network while this estimator fits and predicts (torch's
        setting is put back after every call). ``None`` means 1: the networks trained here are
        small, and on a machine that other processes share, more threads mostly wait for each
        other; ``-1`` uses every processor, ``-2`` all but one. See
        ``benchmarks/training.py --load 2`` for the measurement.
    verbose : int, default=0
        ``1``: a table of the epochs' ``history_``; ``2`` or more: the table under a
        progress bar, drawn by tqdm when it is installed (``pip install skfair[progress]``),
        else the table alone, with no error (see :class:`FairNeuralClassifier`).
    random_state : int, RandomState instance or None, default=None
        Seeds the network's initialisation and the batches.

    Attributes
    ----------
    n_features_in_ : int
        Number of columns of ``X`` seen in fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Their names, when ``X`` is a DataFrame.
    protected_indices_ : list of int
        Positions of the protected columns.
    group_encoder_ : GroupEncoder
        The values of every protected attribute (``group_encoder_.categories_``).
    constraint_ : AffineConstraint or None
        The constraint in use.
    bounds_ : tuple or None
        The box used.
    module_ : torch.nn.Module
        The trained network.
    history_ : list of dict
        Per epoch: ``epoch``, ``train_loss`` (the squared error, in units of the targets'
        standard deviation, of the training batches' predictions after the layer, without
        the distortion penalty), ``train_penalty`` (the penalty: ``train_loss +
        train_penalty`` is the minimised objective), ``train_gap`` (the gap of the network's
        predictions *before* the layer), ``train_fair_gap`` (after it), ``val_loss``,
        ``val_gap`` and ``val_regime`` (with early stopping: the split as ``predict`` gives
        it, and whether that was an ``"exact"`` projection, a ``"stream"`` step (fewer rows
        than ``b_tau``) or ``"unconstrained"``), ``seconds``; each described in
        :class:`FairNeuralClassifier`'s ``history_``.
    loss_curve_ : list of float
        The minimised objective per epoch, ``train_loss + train_penalty`` of ``history_`` (as
        scikit-learn's MLP counts its regularisation in its loss curve).
    n_iter_ : int
        Number of epochs run.
    dual_init_ : dict
        Average multipliers of the kept epoch's projections (the last one, or with early
        stopping the one whose network is kept), in the stream's scale.
    calibration_ : Calibration
        With ``inference="individual"``: the per-combination offsets (see
        :class:`FairNeuralClassifier`).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skfair import FairNeuralRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame({"x": rng.normal(size=300), "g": rng.choice(["a", "b"], 300)})
    >>> y = X["x"] + 2.0 * (X["g"] == "b")
    >>> reg = FairNeuralRegressor(protected_attributes=["g"], epsilon=0.1, max_epochs=30,
    ...                           random_state=0).fit(X, y)
    >>> pred = reg.predict(X)
    >>> bool(abs(pred[X["g"] == "b"].mean() - pred[X["g"] == "a"].mean()) <= 0.1 + 1e-6)
    True
    """

    _parameter_constraints = {
        **BaseFairNeural._parameter_constraints,
        "fairness": [AffineConstraint, StrOptions({"demographic_parity", "mean_residual"})],
        "bounds": [None, Options(bool, {False}), tuple, list],
    }

    def __init__(self, *, protected_attributes: str | int | Sequence[str | int] | None = None,
                 exclude_protected: bool = False,
                 fairness: str | AffineConstraint = "demographic_parity", epsilon: float = 0.05,
                 intersectional: bool = False,
                 handle_unknown: Literal["error", "new_group"] = "error",
                 solver: Literal["exact", "qpth"] = "exact", b_tau: int = 100,
                 eta0: float | None = None, stream_warm_start: bool = True,
                 distortion_penalty: float = 10.0,
                 inference: Literal["batch", "individual"] = "batch",
                 bounds: tuple[float, float] | Literal[False] | None = None,
                 hidden_layer_sizes: Sequence[int] = (64, 64),
                 activation: Literal["relu", "tanh", "logistic", "gelu"] = "relu",
                 module: torch.nn.Module | Callable[[int], torch.nn.Module] | None = None,
                 batch_size: int = 256, max_epochs: int = 100, learning_rate: float = 1e-3,
                 learning_rate_schedule: Literal["constant", "adaptive"] = "constant",
                 optimizer: Literal["adam", "adamw", "sgd"] = "adam", weight_decay: float = 0.0,
                 early_stopping: bool = False, validation_fraction: float = 0.1,
                 n_iter_no_change: int = 10, tol: float = 1e-4, warm_start: bool = False,
                 device: str | torch.device = "cpu", n_jobs: int | None = None,
                 verbose: int = 0,
                 random_state: int | np.random.RandomState | None = None) -> None:
        super().__init__(
            protected_attributes=protected_attributes, exclude_protected=exclude_protected,
            fairness=fairness, epsilon=epsilon, intersectional=intersectional,
            handle_unknown=handle_unknown, solver=solver,
            b_tau=b_tau, eta0=eta0, stream_warm_start=stream_warm_start,
            distortion_penalty=distortion_penalty, inference=inference,
            hidden_layer_sizes=hidden_layer_sizes, activation=activation,
            module=module, batch_size=batch_size, max_epochs=max_epochs,
            learning_rate=learning_rate, learning_rate_schedule=learning_rate_schedule,
            optimizer=optimizer, weight_decay=weight_decay, early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change, tol=tol, warm_start=warm_start, device=device,
            n_jobs=n_jobs, verbose=verbose, random_state=random_state)
        self.bounds = bounds

    def _encode_targets(self, y, reset, classes=None):
        y = column_or_1d(check_array(y, ensure_2d=False, dtype=np.float64,
                                     input_name="y"), warn=True)
        if reset:
            scale = float(y.std())
            self._target_loc, self._target_scale = float(y.mean()), scale if scale > 0 else 1.0
        return y

    @property
    def _distortion_unit(self):
        return self._target_scale

    def _output(self, raw):
        return self._target_loc + self._target_scale * raw

    _compiled_loss = _kernels.SQUARED_ERROR

    def _sample_losses(self, y_fair, target):
        return ((y_fair - target) / self._target_scale) ** 2

    def _fit_bounds(self, target):
        if self.bounds is False:
            return None
        if self.bounds is None:
            lo, hi = float(target.min()), float(target.max())
            margin = BOUNDS_MARGIN * (hi - lo) if hi > lo else 1.0
            return (lo - margin, hi + margin)
        lo, hi = self.bounds  # checked by _validate_params
        return (float(lo), float(hi))

    def _validate_params(self):
        super()._validate_params()
        if self.bounds is None or self.bounds is False:
            return
        pair = list(self.bounds)
        if not (len(pair) == 2
                and all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
                        and np.isfinite(v) for v in pair)
                and pair[0] < pair[1]):
            raise InvalidParameterError(
                f"bounds must be None, False or a pair of finite numbers (lo, hi) with lo < hi; "
                f"got {self.bounds!r}. Use bounds=False for unbounded predictions."
            )

    def predict(self, X: ArrayLike | pd.DataFrame) -> np.ndarray:
        """Fair predictions (stateless).

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        return self._predict_values(X)

    def audit_predict(self, X: ArrayLike | pd.DataFrame, y: ArrayLike) -> np.ndarray:
        """Fair predictions of a labelled batch (an audit, a hold-out set), given its targets:
        one exact projection with the constraint given ``y`` (``mean_residual`` included, which
        cannot act at prediction time without targets), any batch size. Stateless.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            True targets.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        return self._audit_values(X, y)

    def partial_predict(self, X: ArrayLike | pd.DataFrame) -> np.ndarray:
        """Predictions for the next batch of a stream (stateful); see
        :meth:`FairNeuralClassifier.partial_predict_proba`.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        return self._partial_values(X)
