"""FairNeuralClassifier: a binary neural classifier whose probabilities are fair by construction."""

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from scipy.special import expit
from sklearn.base import ClassifierMixin, _fit_context
from sklearn.exceptions import NotFittedError
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import column_or_1d

from . import _kernels, _streaming
from ._base import BaseFairNeural, Self
from ._network import ends_in_sigmoid
from .constraints import AffineConstraint, DemographicParity, DisparateImpact, get_constraint
from .decisions import fair_labels

__all__ = ["FairNeuralClassifier"]


class FairNeuralClassifier(ClassifierMixin, BaseFairNeural):
    """Binary neural network classifier trained through a fairness layer.

    The network's probabilities ``p = sigmoid(f(X))`` are projected onto the probabilities whose
    group statistics differ by at most ``epsilon`` (the closest ones in Euclidean distance, within
    ``[0, 1]``), and the network is trained with binary cross-entropy on the projected
    probabilities, so it learns to be accurate *given* the constraint. With
    ``constrain="logit"`` the layer acts on the logits ``f(X)`` instead, with no bounds, and the
    probabilities are ``sigmoid`` of the fair logits: every guarantee below then holds for the
    logits.

    At prediction time a batch of at least ``b_tau`` rows is projected exactly: its
    probabilities (or logits) satisfy the constraint (hard guarantee, checked to 1e-9 of the
    outputs' scale). A shorter batch takes a step of the online primal-dual algorithm, whose
    sample-weighted average violation over a stream converges to at most ``epsilon`` (see
    :meth:`partial_predict_proba`). Constraints that need true labels (equalized odds,
    equal opportunity) are enforced during training only: at prediction time labels are unknown,
    and the probabilities are the trained network's, which ``distortion_penalty`` pushed toward
    the fair ones (no hard guarantee for these constraints at prediction time).

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
    fairness : {"demographic_parity", "equalized_odds", "equal_opportunity", \
            "false_positive_rate_parity", "error_rate_parity", "disparate_impact"} or \
            AffineConstraint, \
            default="demographic_parity"
        The constraint (see :mod:`skfair.constraints`); on probabilities, demographic parity
        bounds the difference of the groups' mean predicted probabilities.
    constrain : {"proba", "logit"}, default="proba"
        Where the constraint acts. ``"proba"``: on the probabilities, within ``[0, 1]``.
        ``"logit"``: on the network's logits, unbounded (as a :class:`~skfair.FairnessLayer`
        with ``bounds=None`` on raw logits): demographic parity then bounds the difference of
        the groups' mean logits, the network trains with the log loss of ``sigmoid`` of the
        fair logits, :meth:`predict_proba` returns ``sigmoid`` of them and
        :meth:`decision_function` the fair logits themselves. Every guarantee on scores
        (exact batches, streams and :meth:`stream_stats`, calibration offsets) is then on the
        logit scale; the groups' mean probabilities may differ by more than ``epsilon``, and
        ``individual_gap_bound`` of the scores is infinite. ``epsilon`` and
        ``distortion_penalty`` are in the units of that scale. Fixed by ``fit`` (and the first
        ``partial_fit``); the network must give logits (no ``module`` ending in
        ``nn.Sigmoid``).
    epsilon : float, default=0.05
        Largest allowed difference.
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
    guarantee : {"proba", "labels"}, default="proba"
        What :meth:`predict` guarantees. ``"proba"``: the scores meet the constraint (the
        probabilities, or the logits with ``constrain="logit"``, as described above) and the
        labels are ``p > 0.5``. ``"labels"`` (demographic parity or disparate impact): in every
        batch of at least ``b_tau`` rows, the *selection rates* of the predicted labels meet the
        constraint exactly, as fractions of counts, and among such labelings the one of highest
        expected accuracy under the fair probabilities is returned
        (:func:`skfair.decisions.fair_labels`); the scores keep their own guarantee. Batches
        shorter than ``b_tau`` are decided by an online primal-dual algorithm over per-group
        threshold offsets, whose sample-weighted average selection-rate gap provably converges
        to at most ``epsilon`` (see :meth:`stream_stats`, key ``"labels"``).
    solver : {"exact", "qpth"}, default="exact"
        Projection solver: ``"exact"``, the package's own (certified by the guarantee check), or
        ``"qpth"``, the reference implementation (``O(n^2)`` memory; falls back to the exact
        solver when its result fails the check). See :class:`~skfair.FairnessLayer`.
    b_tau : int, default=100
        Batches with at least this many rows are projected exactly; shorter ones stream.
    eta0 : float, default=None
        Dual step size of the streaming regime (``None``: 0.1 for the scores, 0.3 for the
        decisions of ``guarantee="labels"``).
    stream_warm_start : bool, default=True
        Start streams from the multipliers recorded in fit (``dual_init_``).
    distortion_penalty : float, default=10.0
        Weight of the mean squared distance between the network's outputs and their fair
        projection (probabilities, or logits with ``constrain="logit"``), added to the loss: it
        teaches the network to be fair by itself. This is what makes label-dependent
        constraints (enforced through the layer in training only) carry over to prediction,
        and it leaves less for the layer to correct on small batches.
    inference : {"batch", "individual"}, default="batch"
        ``"batch"``: predictions are fair *per batch* (as above), so a row's prediction
        depends on the rows predicted with it. ``"individual"``: every row is predicted on its
        own, from fixed per-group offsets (and, with ``guarantee="labels"``, decision
        thresholds) that one exact projection of a calibration set gave each combination of
        protected groups (:meth:`calibrate`; ``fit`` calibrates on the training data). The
        same row always gets the same prediction; the calibration set meets the constraint
        (exactly, up to ties of scores at a threshold), and new rows only in the population
        sense of :meth:`individual_gap_bound`. Needs a label-free constraint; a combination of
        groups absent from the calibration set raises ``ValueError``. No stream.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Widths (positive integers) of the hidden layers of the default multilayer perceptron.
    activation : {"relu", "tanh", "logistic", "gelu"}, default="relu"
        Its activation.
    module : torch.nn.Module or callable, default=None
        A network to use instead of the MLP: a module mapping ``(n, n_inputs)`` float32 inputs to
        one logit per row, shape ``(n,)`` or ``(n, 1)`` (it is copied in fit), or a callable
        ``n_inputs -> module``. ``n_inputs`` counts the columns of ``X`` that are not protected,
        then the protected attributes' encoding (a 0/1 column for a binary attribute, one
        column per value otherwise) unless ``exclude_protected``. An ``nn.Sequential`` ending
        in ``nn.Sigmoid`` is read as giving probabilities (no second sigmoid). Its floating
        point parameters must be float32; ``fit`` checks all of this on two rows and raises
        :class:`ValueError` naming what does not match.
    batch_size : int, default=256
        Training mini-batch size: an epoch is ``ceil(n / batch_size)`` batches whose sizes differ
        by one at most. Batches are stratified: each keeps the data's share of every group (and,
        for label-dependent constraints, group x label) combination.
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
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss (a dict from label to weight, or ``"balanced"``:
        ``n / (2 * n_c)``, as in scikit-learn), e.g. for a rare positive class. Unlike
        ``sample_weight`` they leave the constraint's group means unweighted: fairness is
        measured on the data as it is.
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
        Continue training the fitted network in the next ``fit`` (which raises
        :class:`ValueError` if its ``X`` gives the network another number of inputs).
    device : str or torch.device, default="cpu"
        Where the network trains and predicts (the pickled model always holds CPU tensors); fit
        raises :class:`ValueError` if this machine does not have it.
    n_jobs : int or None, default=None
        Threads torch uses for the network while this estimator fits and predicts (torch's
        setting is put back after every call). ``None`` means 1: the networks trained here are
        small, and on a machine that other processes share, more threads mostly wait for each
        other; ``-1`` uses every processor, ``-2`` all but one. See
        ``benchmarks/training.py --load 2`` for the measurement.
    verbose : int, default=0
        What ``fit`` and ``partial_fit`` print as they train. ``0``: nothing. ``1``: a table,
        its header once, then a row per epoch with the values of ``history_`` (a column per
        key that has values in this fit); the validation gap's heading names its
        ``val_regime`` (e.g. ``val_gap[stream]``) and, with early stopping, ``*`` after the
        validation loss marks the epochs that improved it by at least ``tol`` (the last marked
        one is the network ``fit`` keeps). ``2`` or more: the table under a progress bar over
        the fit's training batches, drawn by tqdm (``pip install skfair[progress]``); without
        tqdm, the table alone, with no error.
    random_state : int, RandomState instance or None, default=None
        Seeds the network's initialisation and the batches.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The two class labels; ``classes_[1]`` is the positive class.
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
        ``(0.0, 1.0)``; None with ``constrain="logit"`` (logits are unbounded).
    module_ : torch.nn.Module
        The trained network.
    history_ : list of dict
        One entry per epoch (``pd.DataFrame(clf.history_)`` is a table of them); a key without
        a value in this fit (no protected attributes, no early stopping) holds None.

        - ``epoch``: its number, counting on over warm starts and ``partial_fit`` calls.
        - ``train_loss``: the log loss of the training batches' probabilities *after* the
          layer (each batch projected exactly, as it was trained; with ``constrain="logit"``,
          ``sigmoid`` of the fair logits), without the distortion penalty: the quantity of
          ``val_loss``. The mean over the epoch's batches (weighted by their sizes) of their
          weighted mean loss; without protected attributes, of the network's probabilities.
        - ``train_penalty``: the distortion penalty over the same batches (``distortion_penalty``
          times the mean squared distance between the network's probabilities and the fair
          ones). ``train_loss + train_penalty`` is the objective the optimizer minimised.
        - ``train_gap``: the constraint's gap of the network's probabilities *before* the
          layer, over all of the epoch's batches as they were computed: what the layer had to
          correct, and what ``distortion_penalty`` teaches the network to shrink.
        - ``train_fair_gap``: the gap of the same batches' probabilities *after* the layer,
          pooled over the epoch (each batch meets ``epsilon`` on its own; pooled, the gap may
          differ slightly).
        - ``val_loss``, ``val_gap``: with early stopping, the log loss and the gap of the
          probabilities ``predict_proba`` (with ``inference="batch"``) gives for the whole
          validation split at once with the epoch's network and ``dual_init_``.
        - ``val_regime``: how ``predict_proba`` put that split through the layer:
          ``"exact"`` (at least ``b_tau`` rows: one exact projection, ``val_gap`` at most
          ``epsilon``), ``"stream"`` (fewer rows: one step of a new stream, as predicting
          that few rows does; ``val_gap`` may exceed ``epsilon``: raise
          ``validation_fraction`` or lower ``b_tau`` for an exact split) or
          ``"unconstrained"`` (no protected attributes, or a constraint that needs true
          labels: predictions do not go through the layer).
        - ``seconds``: the epoch's duration, validation included.

        The penalty and the gaps are on the scale the layer acts on: logits with
        ``constrain="logit"``.

        With early stopping, ``fit`` keeps the network and ``dual_init_`` of the last epoch
        that improved ``val_loss`` by at least ``tol``.
    loss_curve_ : list of float
        The minimised objective per epoch, ``train_loss + train_penalty`` of ``history_`` (as
        scikit-learn's MLP counts its regularisation in its loss curve).
    n_iter_ : int
        Number of epochs run.
    dual_init_ : dict
        Average multipliers of the kept epoch's projections (the last one, or with early
        stopping the one whose network is kept), in the stream's scale.
    calibration_ : Calibration
        With ``inference="individual"``: per combination of groups (``cells``, their group
        codes), the ``offsets`` subtracted from the network's probabilities (logits with
        ``constrain="logit"``), the decision ``thresholds`` of the offset scores
        (``guarantee="labels"``, else None), the calibration rows (``sizes``) and the
        constraint's gap on the calibration set of the offset scores (``gap``) and of the
        thresholded labels (``label_gap``).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skfair import FairNeuralClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame({"x": rng.normal(size=400), "sex": rng.choice(["F", "M"], 400)})
    >>> y = (X["x"] + (X["sex"] == "M") + rng.normal(size=400) > 0.5).astype(int)
    >>> clf = FairNeuralClassifier(protected_attributes=["sex"], epsilon=0.05,
    ...                            max_epochs=20, random_state=0).fit(X, y)
    >>> p = clf.predict_proba(X)[:, 1]
    >>> bool(abs(p[X["sex"] == "M"].mean() - p[X["sex"] == "F"].mean()) <= 0.05 + 1e-7)
    True

    On the logits, as a fairness layer without bounds on a network's raw outputs:

    >>> on_logits = FairNeuralClassifier(protected_attributes=["sex"], constrain="logit",
    ...                                  max_epochs=20, random_state=0).fit(X, y)
    >>> z = on_logits.decision_function(X)  # the fair logits
    >>> bool(abs(z[X["sex"] == "M"].mean() - z[X["sex"] == "F"].mean()) <= 0.05 + 1e-7)
    True
    """

    _parameter_constraints = {
        **BaseFairNeural._parameter_constraints,
        "fairness": [AffineConstraint, StrOptions({
            "demographic_parity", "equalized_odds", "equal_opportunity",
            "false_positive_rate_parity", "error_rate_parity", "disparate_impact"})],
        "constrain": [StrOptions({"proba", "logit"})],
        "guarantee": [StrOptions({"proba", "labels"})],
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(self, *, protected_attributes: str | int | Sequence[str | int] | None = None,
                 exclude_protected: bool = False,
                 fairness: str | AffineConstraint = "demographic_parity",
                 constrain: Literal["proba", "logit"] = "proba", epsilon: float = 0.05,
                 intersectional: bool = False,
                 handle_unknown: Literal["error", "new_group"] = "error",
                 guarantee: Literal["proba", "labels"] = "proba",
                 solver: Literal["exact", "qpth"] = "exact", b_tau: int = 100,
                 eta0: float | None = None, stream_warm_start: bool = True,
                 distortion_penalty: float = 10.0,
                 inference: Literal["batch", "individual"] = "batch",
                 hidden_layer_sizes: Sequence[int] = (64, 64),
                 activation: Literal["relu", "tanh", "logistic", "gelu"] = "relu",
                 module: torch.nn.Module | Callable[[int], torch.nn.Module] | None = None,
                 batch_size: int = 256, max_epochs: int = 100, learning_rate: float = 1e-3,
                 learning_rate_schedule: Literal["constant", "adaptive"] = "constant",
                 optimizer: Literal["adam", "adamw", "sgd"] = "adam", weight_decay: float = 0.0,
                 class_weight: dict[Any, float] | Literal["balanced"] | None = None,
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
            validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change,
            tol=tol, warm_start=warm_start, device=device, n_jobs=n_jobs, verbose=verbose,
            random_state=random_state)
        self.constrain = constrain
        self.guarantee = guarantee
        self.class_weight = class_weight

    def _validate_params(self):
        super()._validate_params()
        if self.guarantee != "labels" or self.protected_attributes is None:
            return
        constraint = get_constraint(self.fairness)
        if not isinstance(constraint, (DemographicParity, DisparateImpact)):
            raise ValueError(
                f"guarantee='labels' makes the selection rates of the predicted labels meet "
                f"demographic parity or disparate impact; it needs fairness="
                f"'demographic_parity' or 'disparate_impact', got fairness={self.fairness!r}.")

    def _encode_targets(self, y, reset, classes=None):
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if reset:
            classes = np.unique(y if classes is None else classes)
            if len(classes) != 2:
                raise ValueError(
                    f"Only binary classification is supported; y must hold exactly 2 "
                    f"classes; got {len(classes)} class(es): {list(classes)[:5]}."
                )
            self.classes_ = classes
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise ValueError(f"y has labels not among classes_ {list(self.classes_)}: "
                             f"{list(unknown)[:5]}.")
        return (y == self.classes_[1]).astype(np.float64)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self: Self, X: ArrayLike | pd.DataFrame, y: ArrayLike,
                    classes: ArrayLike | None = None, sample_weight: ArrayLike | None = None,
                    groups: Sequence[ArrayLike] | None = None) -> Self:
        """Train on one chunk of the data: one epoch over ``(X, y)`` through the fairness layer.

        See :meth:`BaseFairNeural.partial_fit <skfair._base.BaseFairNeural.partial_fit>`;
        ``classes`` (the two class labels) is required on the first call, as in
        scikit-learn's incremental estimators.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        classes : array-like of shape (2,), default=None
            Both class labels; first call only.
        sample_weight : array-like of shape (n_samples,), default=None
        groups : list of array-like, default=None
            First call only: per protected attribute, every value it can take.

        Returns
        -------
        self : object
        """
        if "module_" not in self.__dict__ and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._partial_fit(X, y, sample_weight, groups, classes)

    def _loss_weights(self, target, weight):
        if self.class_weight is None:
            return None
        # target is 0/1 (classes_[1] is 1); scikit-learn's weights, keyed by the labels
        per_class = compute_class_weight(self.class_weight, classes=self.classes_,
                                         y=self.classes_[target.astype(np.int64)])
        return weight * per_class[target.astype(np.int64)]

    def _on_logits(self):
        """Whether the fitted layer acts on logits (``constrain="logit"`` at fit: no bounds)."""
        return self.bounds_ is None

    def _start(self, features, codes, target, constraint, device, warm):
        super()._start(features, codes, target, constraint, device, warm)
        if self._on_logits() and ends_in_sigmoid(self.module_):
            raise ValueError(
                "constrain='logit' puts the network's logits through the layer, and this module "
                "ends in nn.Sigmoid (it gives probabilities): drop its last layer, or use "
                "constrain='proba'.")

    def _output(self, raw):
        if self._on_logits():
            return raw
        # a module ending in a sigmoid gives probabilities already: no second sigmoid
        return raw if ends_in_sigmoid(self.module_) else torch.sigmoid(raw)

    def _probabilities(self, values):
        """The probabilities of outputs on the layer's scale (a numpy array)."""
        return expit(values) if self._on_logits() else values

    @property
    def _compiled_loss(self):
        return _kernels.LOGIT_LOG_LOSS if self._on_logits() else _kernels.LOG_LOSS

    def _sample_losses(self, y_fair, target):
        # (one fused operation forward and backward: cheaper than its formula in tensor ops)
        if self._on_logits():
            return torch.nn.functional.binary_cross_entropy_with_logits(y_fair, target,
                                                                        reduction="none")
        # The projection may put probabilities exactly on 0 or 1; keep the log finite.
        clip = _kernels.PROBABILITY_CLIP
        return torch.nn.functional.binary_cross_entropy(y_fair.clamp(clip, 1 - clip), target,
                                                        reduction="none")

    def _fit_bounds(self, target):
        return None if self.constrain == "logit" else (0.0, 1.0)

    def predict_proba(self, X: ArrayLike | pd.DataFrame) -> np.ndarray:
        """Fair probabilities (stateless); with ``constrain="logit"``, ``sigmoid`` of the fair
        logits (:meth:`decision_function`).

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, 2)
            Probabilities of ``classes_[0]`` and ``classes_[1]``.
        """
        p = self._probabilities(self._predict_values(X))
        return _class_columns(p)

    def audit_predict_proba(self, X: ArrayLike | pd.DataFrame, y: ArrayLike) -> np.ndarray:
        """Fair probabilities of a labelled batch (an audit, a hold-out set), given its labels.

        Label-dependent constraints (equalized odds, equal opportunity, ...) cannot act at
        prediction time, where labels are unknown; with the labels at hand, this projects the
        batch's probabilities exactly onto the constraint as training does (any batch size):
        the returned probabilities meet it on this batch, to the guarantee's tolerance. Label-
        free constraints are projected the same way. Stateless.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            True labels, among ``classes_``.

        Returns
        -------
        proba : ndarray of shape (n_samples, 2)
        """
        p = self._probabilities(self._audit_values(X, y))
        return _class_columns(p)

    def predict_log_proba(self, X: ArrayLike | pd.DataFrame) -> np.ndarray:
        """Logarithms of :meth:`predict_proba` (``-inf`` where the layer put a probability at 0).

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, 2)
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def decision_function(self, X: ArrayLike | pd.DataFrame) -> np.ndarray:
        """Log-odds of the fair probabilities: positive where :meth:`predict` (with
        ``guarantee="proba"``) says ``classes_[1]`` (stateless). With ``constrain="logit"``, the
        fair logits the layer returned (the values its guarantee is on); else ``log(p / (1 -
        p))``, infinite where the layer put a probability at 0 or 1.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        values = self._predict_values(X)
        if self._on_logits():
            return values
        with np.errstate(divide="ignore"):
            return np.log(values) - np.log1p(-values)

    def predict(self, X: ArrayLike | pd.DataFrame) -> np.ndarray:
        """Class labels: ``classes_[1]`` where the fair probability exceeds 0.5 (stateless).

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        values, groups = self._predict_values_and_groups(X)
        if self._row_by_row(groups):
            return self._thresholded(values, groups)
        p = self._probabilities(values)
        if not self._decides(groups) or len(p) == 0:
            return self.classes_[(p > 0.5).astype(int)]
        # like the probabilities: the first batch of a fresh stream
        labels = self._new_decision_stream().step(torch.from_numpy(p), groups)
        return self.classes_[labels.numpy().astype(int)]

    def _thresholded(self, values, groups):
        """Row-by-row labels of the offset outputs ``values`` (on the layer's scale): above
        their combination's calibrated threshold (on that scale) with ``guarantee="labels"``,
        else where their probability exceeds 0.5."""
        thresholds = self.calibration_.thresholds
        if self.guarantee != "labels":
            return self.classes_[(self._probabilities(values) > 0.5).astype(int)]
        if thresholds is None:
            raise NotFittedError("guarantee='labels' was set after the calibration, which "
                                 "learned no decision thresholds: call calibrate(X) again.")
        return self.classes_[(values > thresholds[self._cells(groups)]).astype(int)]

    def _calibration_labels(self):
        if self.guarantee != "labels":
            return None
        ratio = getattr(self.constraint_, "ratio", None)
        # the labels of highest expected accuracy under the probabilities of the scores; a
        # cell's labels are its top scores, whose thresholds are on the scores' scale
        return lambda scores, codes: fair_labels(self._probabilities(scores), codes,
                                                 min(float(self.epsilon), 1.0), ratio=ratio)

    def _decides(self, groups):
        """Whether labels come from a decision stream (``guarantee="labels"``, groups)."""
        return self.guarantee == "labels" and groups is not None

    def _new_decision_stream(self):
        return _streaming.DecisionStream(
            self.constraint_, min(float(self.epsilon), 1.0),
            self.eta0 if self.eta0 is not None else _streaming.DEFAULT_DECISION_ETA0, self.b_tau)

    def partial_predict_proba(self, X: ArrayLike | pd.DataFrame) -> np.ndarray:
        """Probabilities for the next batch of a stream (stateful); with ``constrain="logit"``
        the stream acts on the logits, and the probabilities are ``sigmoid`` of its outputs.

        A batch of at least ``b_tau`` rows is projected exactly; a smaller one takes one step of
        the online primal-dual algorithm, which updates the stream's multipliers (see
        :meth:`stream_stats` for the guarantee). The first call starts a stream; start a new one
        with :meth:`reset_stream`. Invalid input raises before the stream changes; an empty batch
        returns an empty array and changes nothing.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, 2)
        """
        p = self._probabilities(self._partial_values(X))
        return _class_columns(p)

    def partial_predict(self, X: ArrayLike | pd.DataFrame) -> np.ndarray:
        """Class labels for the next batch of a stream (stateful); see
        :meth:`partial_predict_proba`.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        values, groups = self._partial_values_and_groups(X)
        if len(values) and self._row_by_row(groups):
            return self._thresholded(values, groups)
        p = self._probabilities(values)
        if not self._decides(groups) or len(p) == 0:
            return self.classes_[(p > 0.5).astype(int)]
        stream = getattr(self, "decision_stream_", None)
        if stream is None:
            stream = self._new_decision_stream()
        labels = stream.step(torch.from_numpy(p), groups)
        self.decision_stream_ = stream
        return self.classes_[labels.numpy().astype(int)]

    _stream_attributes = ("stream_", "decision_stream_")

    def stream_stats(self) -> dict[str, Any]:
        """Statistics of the current stream.

        Returns
        -------
        stats : dict
            The statistics of the scores (see :meth:`BaseFairNeural.stream_stats
            <skfair._base.BaseFairNeural.stream_stats>`), on the scale that key ``"scale"``
            names: ``"proba"`` (probabilities) or ``"logit"`` (with ``constrain="logit"``, the
            gaps and the bound are differences of mean logits). With ``guarantee="labels"``, key
            ``"labels"`` holds the same statistics for the decisions of
            :meth:`partial_predict` (their rows' values are selection rates:
            ``weighted_avg_fairness_gap`` is at most ``epsilon + bound``), or None before its
            first batch.
        """
        stats = super().stream_stats()
        stats["scale"] = "logit" if self._on_logits() else "proba"
        if self.guarantee == "labels":
            stream = getattr(self, "decision_stream_", None)
            stats["labels"] = None if stream is None else stream.stats()
        return stats

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


def _class_columns(p):
    """The probabilities ``p`` of ``classes_[1]`` as the (n, 2) array ``[1 - p, p]``, written in
    place (``np.column_stack``'s generic path costs more on a stream's single row)."""
    proba = np.empty((len(p), 2), dtype=p.dtype)
    np.subtract(1, p, out=proba[:, 0])
    proba[:, 1] = p
    return proba
