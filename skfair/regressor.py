"""FairNeuralRegressor: a neural regressor whose predictions are fair by construction."""

import numbers

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import check_array, column_or_1d

from . import _kernels
from ._base import BaseFairNeural

#: share of the training targets' range added on each side when bounds are inferred
BOUNDS_MARGIN = 0.1


class FairNeuralRegressor(RegressorMixin, BaseFairNeural):
    """Neural network regressor trained through a fairness layer.

    The network's predictions are projected onto the predictions whose group statistics differ
    by at most ``epsilon`` (the closest in Euclidean distance, within ``bounds``), and the network
    is trained with squared error on the projected predictions. Targets are standardised inside
    the network; the projection acts in the targets' own units, so ``epsilon`` is in those units.

    Prediction follows :class:`FairNeuralClassifier`: chunks of at least ``b_tau`` rows are
    projected exactly, shorter ones stream; ``mean_residual`` needs true targets, so it is enforced
    in training only and predictions are the trained network's, clipped to the bounds.

    Parameters
    ----------
    fairness : {"demographic_parity", "mean_residual"} or AffineConstraint, \
            default="demographic_parity"
        ``"demographic_parity"``: the groups' mean predictions differ by at most ``epsilon`` (mean
        prediction parity). ``"mean_residual"``: every group's mean residual is within ``epsilon``
        of zero.
    bounds : None, False or tuple (lo, hi), default=None
        Box on the predictions. ``None`` infers it from the training targets,
        ``[min - 0.1 r, max + 0.1 r]`` with ``r`` their range; ``False`` leaves predictions
        unbounded; a pair of finite numbers ``lo < hi`` sets it explicitly.
    **other parameters
        As :class:`FairNeuralClassifier` (``protected_attributes``, ``epsilon``, ``b_tau``, the
        network and training parameters, ...).

    Attributes
    ----------
    bounds_ : tuple or None
        The box used.
    Other attributes
        As :class:`FairNeuralClassifier`, without ``classes_``.

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
        "bounds": [None, "boolean", tuple, list],
    }
    _fairness_options = ("demographic_parity", "mean_residual")

    def __init__(self, *, protected_attributes=None, exclude_protected=False,
                 fairness="demographic_parity", epsilon=0.05, intersectional=False,
                 solver="exact", b_tau=100, eta0=None, stream_warm_start=True,
                 distortion_penalty=10.0, inference_batch_size=None, inference="batch",
                 bounds=None, hidden_layer_sizes=(64, 64),
                 activation="relu", module=None, batch_size=256, max_epochs=100,
                 learning_rate=1e-3, weight_decay=0.0, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, warm_start=False,
                 device="cpu", verbose=0, random_state=None):
        super().__init__(
            protected_attributes=protected_attributes, exclude_protected=exclude_protected,
            fairness=fairness, epsilon=epsilon, intersectional=intersectional, solver=solver,
            b_tau=b_tau, eta0=eta0, stream_warm_start=stream_warm_start,
            distortion_penalty=distortion_penalty, inference_batch_size=inference_batch_size,
            inference=inference, hidden_layer_sizes=hidden_layer_sizes, activation=activation,
            module=module, batch_size=batch_size, max_epochs=max_epochs,
            learning_rate=learning_rate, weight_decay=weight_decay,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change, tol=tol, warm_start=warm_start, device=device,
            verbose=verbose, random_state=random_state)
        self.bounds = bounds

    def _encode_targets(self, y, reset):
        y = column_or_1d(check_array(y, ensure_2d=False, dtype=np.float64,
                                     input_name="y"), warn=True)
        if reset:
            scale = float(y.std())
            self._target_loc, self._target_scale = float(y.mean()), scale if scale > 0 else 1.0
        return y

    @property
    def _scale(self):
        return self._target_scale

    def _output(self, raw):
        return self._target_loc + self._target_scale * raw

    _compiled_loss = _kernels.SQUARED_ERROR

    def _losses(self, y_fair, target):
        return ((y_fair - target) / self._target_scale) ** 2

    def _fit_bounds(self, target):
        if self.bounds is False:
            return None
        if self.bounds is None or self.bounds is True:
            lo, hi = float(target.min()), float(target.max())
            margin = BOUNDS_MARGIN * (hi - lo) if hi > lo else 1.0
            return (lo - margin, hi + margin)
        lo, hi = self.bounds  # checked by _validate_params
        return (float(lo), float(hi))

    def _validate_params(self):
        super()._validate_params()
        if self.bounds is None or isinstance(self.bounds, bool):
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

    def predict(self, X):
        """Fair predictions (stateless).

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        return self._predict_values(X)

    def partial_predict(self, X):
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
