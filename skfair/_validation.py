"""Inputs at the scikit-learn boundary: the network's features and the protected groups of X.

:class:`InputSplitter`, fitted once in ``fit``, turns every later X into ``(features, group
codes)``: the columns that are not protected become float64 network inputs, the protected ones
group codes (:class:`GroupEncoder`) and, unless excluded, 0/1 or one-hot inputs as well.

A value of a protected attribute not seen in fit raises, or with ``handle_unknown="new_group"``
(prediction only) takes the code ``len(categories)``: all of an attribute's unseen values form
one extra group, the same in every batch, so a stream's statistics keyed by group codes stay
consistent. As a network input that group is the mean of the known groups' encodings (0.5 in
a 0/1 column, ``1 / k`` in each of ``k`` one-hot columns): a 0/1 column has no all-zero code
that names no group.
"""

import math
import numbers

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ._warnings import warn
from .constraints import intersect_groups


#: batches of at most this many rows have their protected values looked up one by one in a
#: dict (cheaper than pandas.factorize at that size; see GroupEncoder.transform_columns)
LOOKUP_ROWS = 64
#: columns converted at once through pandas or Python objects (the temporary is this many
#: columns of X; see InputSplitter.split)
COLUMN_BLOCK = 16
#: the smallest float64 magnitude that rounds to infinity in float32 (the network's inputs)
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
#: fit warns about a protected group with fewer training rows than this: its mean, which the
#: constraint bounds, is then mostly noise
SMALL_GROUP = 10
#: fit warns about a protected attribute with more distinct values than this: a numeric column
#: (an age, an income) taken as groups gives one group per value
MANY_GROUPS = 20


def check_dense_2d(X):
    """Raise, saying what to do, unless X is a dense two-dimensional container: the protected
    columns are read from X as it is, before scikit-learn's own checks."""
    if isinstance(X, pd.DataFrame):  # dense and 2-D: nothing to ask it
        return
    if sp.issparse(X):
        raise TypeError(
            "Sparse data was passed for X, but the protected attributes are read from dense "
            "columns: convert it with X.toarray(), or pass a pandas DataFrame (e.g. a "
            "ColumnTransformer with sparse_threshold=0 or set_output(transform='pandas')).")
    ndim = X.ndim if hasattr(X, "ndim") else np.ndim(X)
    if ndim == 1:
        raise ValueError(
            "Expected a 2D X (samples x features), got a 1D array instead. Reshape your data "
            "either using array.reshape(-1, 1) if your data has a single feature or "
            "array.reshape(1, -1) if it contains a single sample (a pandas Series: "
            "series.to_frame().T for one row).")
    if ndim != 2:
        raise ValueError(f"Expected a 2D X (samples x features); got {ndim} dimension(s).")


def attribute_list(protected_attributes):
    """``protected_attributes`` as a list (a single name or position becomes a list of one)."""
    if isinstance(protected_attributes, (str, numbers.Integral)):
        return [protected_attributes]
    return list(protected_attributes)


def resolve_protected(protected_attributes, feature_names, n_features):
    """Column indices of the protected attributes.

    Parameters
    ----------
    protected_attributes : str, int, or list of str/int
        Column names (for DataFrames) or integer positions.
    feature_names : array of str or None
        Column names of X, None for arrays without names.
    n_features : int
        Number of columns of X.

    A name matches a column of that name or, failing that, the single column that ends in
    ``"__" + name`` (the prefix ``ColumnTransformer`` adds, such as ``remainder__sex``).
    """
    attributes = attribute_list(protected_attributes)
    if not attributes:
        raise ValueError("protected_attributes must name at least one column; got an empty list.")
    names = None if feature_names is None else [str(c) for c in feature_names]
    indices = []
    for attribute in attributes:
        if isinstance(attribute, numbers.Integral) and not isinstance(attribute, bool):
            index = int(attribute)
            if not -n_features <= index < n_features:
                raise ValueError(
                    f"protected attribute {attribute} is out of range for X with {n_features} "
                    f"columns."
                )
            indices.append(index % n_features)
            continue
        if not isinstance(attribute, str):
            raise ValueError(
                f"protected_attributes must hold column names or integer positions; got "
                f"{attribute!r}."
            )
        if names is None:
            raise ValueError(
                f"protected attribute {attribute!r} is a column name, but X has no column names; "
                f"pass a pandas DataFrame or use integer positions."
            )
        if attribute in names:
            indices.append(names.index(attribute))
            continue
        suffixed = [i for i, c in enumerate(names) if c.endswith("__" + attribute)]
        if len(suffixed) == 1:
            indices.append(suffixed[0])
            continue
        if suffixed:
            raise ValueError(
                f"protected attribute {attribute!r} is ambiguous: it matches columns "
                f"{[names[i] for i in suffixed]}."
            )
        raise ValueError(
            f"protected attribute {attribute!r} is not a column of X; the columns are {names}."
        )
    if len(set(indices)) != len(indices):
        raise ValueError(f"protected_attributes name the same column twice: {attributes}.")
    return indices


def protected_frame(protected_attributes, X):
    """The protected columns of ``X`` as a DataFrame, one column per attribute, named as the
    user named it (an integer position takes the column's own name)."""
    attributes = attribute_list(protected_attributes)
    frame = X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X, dtype=object))
    columns = [str(c) for c in frame.columns] if isinstance(X, pd.DataFrame) else None
    out = frame.iloc[:, resolve_protected(attributes, columns, frame.shape[1])]
    out.columns = _display_names(attributes, out.columns)
    return out


def _display_names(attributes, columns):
    # Attributes keep the names the user gave ("sex", not "remainder__sex").
    return [a if isinstance(a, str) else str(c) for a, c in zip(attributes, columns)]


class InputSplitter:
    """X -> ``(features, codes)``: network inputs and protected group codes, fitted once.

    ``fit`` finds the protected columns (:func:`resolve_protected`) and learns their groups
    (:class:`GroupEncoder`); ``transform`` then converts any X with the same columns: the other
    columns to a row-major float64 array (NaN, infinity and values beyond float32's range
    raise, naming the column), the protected ones to a LongTensor of codes of shape
    ``(n, n_attributes)``, appended to the features as a 0/1 column (binary attribute) or
    one-hot columns unless ``exclude_protected``.

    Parameters
    ----------
    protected_attributes : str, int, or list of str/int
    exclude_protected : bool
    intersectional : bool
    """

    def __init__(self, protected_attributes, exclude_protected=False, intersectional=False):
        self.protected_attributes = protected_attributes
        self.exclude_protected = exclude_protected
        self.intersectional = intersectional

    #: what the splitter remembers between calls, rebuilt when used
    _CACHES = ("_frame_plan", "_columns_seen", "_array_runs", "_encoding_cache")

    def __getstate__(self):
        # without the caches: they hold slices and pandas indexes, which skops cannot store
        # (skfair._persistence)
        return {**self.__dict__, **dict.fromkeys(self._CACHES)}

    def fit(self, X, feature_names, n_features):
        """Learn the protected columns' positions and groups from ``X`` (``feature_names``:
        its column names or None; ``n_features``: its number of columns)."""
        self.fit_transform(X, feature_names, n_features)
        return self

    def fit_transform(self, X, feature_names, n_features, known_groups=None):
        """:meth:`fit`, then :meth:`transform` of the same X (split once); ``known_groups``:
        per attribute, values to know besides those of X."""
        self.feature_names = feature_names
        self.indices = resolve_protected(self.protected_attributes, feature_names, n_features)
        self.feature_indices = np.delete(np.arange(n_features), self.indices)
        columns = feature_names if feature_names is not None else range(n_features)
        self.names = _display_names(attribute_list(self.protected_attributes),
                                    [columns[i] for i in self.indices])
        self.__dict__.update(dict.fromkeys(self._CACHES))  # none of an earlier fit
        rest, protected = self.split(X)
        if len(rest) == 0:
            raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
        self._check_features(rest)
        self.encoder = GroupEncoder(self.names, self.intersectional).fit(
            np.column_stack([np.asarray(column, dtype=object) for column in protected]),
            known_groups)
        codes = self.encoder.transform_columns(protected)
        _warn_about_groups(self.encoder, codes)
        return self._inputs(rest, codes)

    def transform(self, X, handle_unknown="error"):
        """``(features, codes)`` of ``X``; see the class docstring (``handle_unknown``: see
        :meth:`GroupEncoder.transform`)."""
        rest, protected = self.split(X, room=self._one_hot_width())
        self._check_features(rest[:, :len(self.feature_indices)])
        return self._inputs(rest, self.encoder.transform_columns(protected, handle_unknown))

    def has_columns(self, columns):
        """Whether a DataFrame's ``columns`` (an Index) are the column names seen in fit.

        The last Index found equal is remembered: the frames of a stream (``X.iloc[[i]]``)
        share its data (``Index.is_``), and an Index cannot change, so their check costs
        nothing."""
        seen = getattr(self, "_columns_seen", None)
        if seen is not None and columns.is_(seen):
            return True
        if columns.tolist() != self.feature_names.tolist():
            return False
        self._columns_seen = columns
        return True

    def split(self, X, room=0):
        """``(rest, protected)``: the columns of X that are not protected as a row-major
        float64 array (NaN where pandas has a missing value) with ``room`` more columns left
        unset (for the caller to fill), and the protected ones, a 1-D array per attribute as X
        holds it (a numpy column, or a pandas array such as a Categorical).

        No round trip through Python objects, which costs seconds and gigabytes at a million
        rows, and no second copy to append the protected attributes' encoding (``room``).
        A DataFrame's numeric columns are copied from pandas' blocks of columns (see
        :meth:`_split_frame`), a numeric array's run by run of adjacent columns; any other X
        goes through Python objects (:func:`split_columns`).
        """
        if isinstance(X, pd.DataFrame):
            return self._split_frame(X, room)
        if isinstance(X, np.ndarray) and X.dtype.kind in "biuf":
            return self._split_numeric(X, room)
        return split_columns(X, self.indices, room)

    def _split_numeric(self, values, room):
        # each run of adjacent kept columns in one slice assignment (no gathered copy)
        if getattr(self, "_array_runs", None) is None:
            kept = self.feature_indices
            parts = np.split(np.arange(len(kept)), np.flatnonzero(np.diff(kept) != 1) + 1)
            self._array_runs = [(int(kept[part[0]]), int(part[0]), len(part))
                                for part in parts if len(part)]
        rest = np.empty((len(values), len(self.feature_indices) + room))
        for first, column, width in self._array_runs:
            rest[:, column:column + width] = values[:, first:first + width]
        return rest, [values[:, i] for i in self.indices]

    def _split_frame(self, X, room):
        """:meth:`split` of a DataFrame, from its blocks.

        pandas holds a frame's columns in blocks, a 2-D array of columns of one dtype each
        (``X._mgr.blocks``, internal but the same from pandas 2 to 3): a numeric block's
        columns go run by run of adjacent columns straight from it (a view)
        into the float64 array, without a temporary copy and, on a frame of one row (a
        stream's), without pandas' indexing, whose fixed cost exceeds the conversion. The
        plan of these copies depends only on which columns each block holds: it is made once
        per layout (every batch of a stream, or of one source, has the same). The columns of
        other blocks (objects, pandas' own arrays) go through ``DataFrame.to_numpy``, at most
        ``COLUMN_BLOCK`` at a time, as every column does where a pandas version does not hold
        its frames so (:func:`_frame_layout` is None).
        """
        blocks, layout = _frame_layout(X)
        plan = getattr(self, "_frame_plan", None)
        if plan is None or plan[0] != layout:
            plan = self._frame_plan = (layout, *self._plan_frame(layout))
        _, runs, converted, protected_at = plan
        rest = np.empty((len(X), len(self.feature_indices) + room))
        for block, start, stop, column in runs:
            rest[:, column:column + stop - start] = blocks[block].values[start:stop].T
        for positions, columns in converted:
            rest[:, columns] = _numeric(lambda: _float_columns(X.iloc[:, positions]))
        protected = []
        for block, row in protected_at:
            if block is None:  # no blocks: row is the column's position
                column = X.iloc[:, row]
                protected.append(column.to_numpy() if isinstance(column.dtype, np.dtype)
                                 else column.array)
                continue
            values = blocks[block].values
            protected.append(values[row] if values.ndim == 2 else values)
        return rest, protected

    def _plan_frame(self, layout):
        """``(runs, converted, protected_at)`` of :meth:`_split_frame` for a frame whose blocks
        are ``layout`` (see :func:`_block_layout`): ``(block, first row, end row, first
        column of rest)`` of every run of a numeric block's kept columns; ``(positions in X,
        columns of rest)`` of at most ``COLUMN_BLOCK`` columns of the other blocks; and
        ``(block, row)`` of every protected attribute (``(None, position in X)`` when
        ``layout`` is None)."""
        n_features = len(self.feature_indices) + len(self.indices)
        blocks_known = layout is not None
        if not blocks_known:
            layout = ((slice(0, n_features), False),)  # every column through to_numpy
        rest_column = np.full(n_features, -1)
        rest_column[self.feature_indices] = np.arange(len(self.feature_indices))
        attribute = {int(index): j for j, index in enumerate(self.indices)}
        runs, other, protected_at = [], [], [None] * len(self.indices)
        for block, (placement, numeric) in enumerate(layout):
            positions = range(n_features)[placement] if isinstance(placement, slice) else placement
            for row, position in enumerate(positions):
                column = int(rest_column[position])
                if position in attribute:
                    protected_at[attribute[position]] = (block, row) if blocks_known else (
                        None, position)
                elif not numeric:
                    other.append((position, column))
                elif runs and runs[-1][0] == block and runs[-1][2] == row and (
                        runs[-1][3] + row - runs[-1][1] == column):
                    runs[-1][2] = row + 1
                else:
                    runs.append([block, row, row + 1, column])
        other.sort()
        converted = [([p for p, _ in other[start:start + COLUMN_BLOCK]],
                      [c for _, c in other[start:start + COLUMN_BLOCK]])
                     for start in range(0, len(other), COLUMN_BLOCK)]
        return [tuple(run) for run in runs], converted, protected_at

    def _check_features(self, rest):
        # X's extremes first, then its columns' (to name them) only when one is out of range
        # or NaN (which fails every comparison)
        if -FLOAT32_OVERFLOW < rest.min(initial=0.0) and rest.max(initial=0.0) < FLOAT32_OVERFLOW:
            return
        peak = _peaks(rest)
        if not np.isfinite(peak).all():
            problem = "NaN" if np.isnan(peak).any() else "infinity"
            raise ValueError(f"Input X contains {problem} in a column that is not protected.")
        _check_peaks(peak, self.feature_indices, self.feature_names)

    def _one_hot_width(self):
        """The number of network inputs of the protected attributes (0 when excluded)."""
        if self.exclude_protected:
            return 0
        return self._encodings()[1]

    def _inputs(self, rest, codes):
        """The network's inputs: ``rest`` with the protected attributes' encoding written into
        its spare columns (those :meth:`transform` left), or appended to it; and ``codes`` (a
        numpy array) as a LongTensor."""
        n_rest = len(self.feature_indices)
        if rest.shape[1] > n_rest:
            self._write_one_hot(codes, rest, n_rest)
        elif not self.exclude_protected:
            rest = np.hstack([rest, self.one_hot(codes)])
        return rest, torch.from_numpy(codes)

    def one_hot(self, codes):
        """Protected attributes as network inputs: a 0/1 column for binary ones, else one-hot;
        the group of unseen values (code ``k``) as the mean of the ``k`` known encodings."""
        codes = np.asarray(codes)
        encoded = np.empty((len(codes), self._encodings()[1]))
        self._write_one_hot(codes, encoded, 0)
        return encoded

    def _write_one_hot(self, codes, out, first):
        """:meth:`one_hot` of ``codes`` written into the columns of ``out`` from ``first`` on,
        attribute by attribute (no temporary of the whole encoding)."""
        for j, (start, stop, encoding) in enumerate(self._encodings()[0]):
            out[:, first + start:first + stop] = encoding[codes[:, j]]

    def _encodings(self):
        """``(columns, width)``: per attribute, ``(start, stop, encoding)``, its columns among
        the ``width`` network inputs of the protected attributes and the inputs of every code,
        a row each (built once)."""
        if getattr(self, "_encoding_cache", None) is None:
            columns, width = [], 0
            for categories in self.encoder.categories_:
                encoding = np.array([[0.0], [1.0], [0.5]]) if len(categories) == 2 else np.vstack(
                    [np.eye(len(categories)), np.full((1, len(categories)),
                                                      1.0 / len(categories))])
                columns.append((width, width + encoding.shape[1], encoding))
                width += encoding.shape[1]
            self._encoding_cache = (columns, width)
        return self._encoding_cache


def _frame_layout(X):
    """``(blocks, layout)``: X's blocks of columns (pandas' internal storage, see
    :meth:`InputSplitter._split_frame`) and :func:`_block_layout` of each, or ``(None, None)``
    where a pandas version does not hold a frame in such blocks."""
    try:
        blocks = X._mgr.blocks
        return blocks, tuple(_block_layout(block) for block in blocks)
    except AttributeError:
        return None, None


def _block_layout(block):
    """What the plan of :meth:`InputSplitter._split_frame` needs of a pandas block: the
    positions of its columns in the frame (a slice, or a tuple of positions) and whether it is
    a 2-D numpy array of numbers (booleans, integers or floats), copied as it is."""
    placement = block.mgr_locs
    positions = placement.as_slice if placement.is_slice_like else tuple(
        placement.as_array.tolist())
    values = block.values
    return positions, (isinstance(values, np.ndarray) and values.ndim == 2
                       and values.dtype.kind in "biuf")


def _warn_about_groups(encoder, codes):
    """Warn about attributes with many distinct values and groups with few training rows."""
    for j, (name, categories) in enumerate(zip(encoder.names, encoder.categories_)):
        if len(categories) > MANY_GROUPS:
            warn(f"protected attribute {name!r} has {len(categories)} distinct values, each a "
                 f"group; if it is numeric, bin it first (e.g. with pandas.cut).", UserWarning)
            continue
        counts = np.bincount(codes[:, j], minlength=len(categories))
        # (a group known but absent, as partial_fit's first chunk may have, is not rare)
        rare = np.flatnonzero((counts > 0) & (counts < SMALL_GROUP))
        small = [f"{categories[k]!r} ({counts[k]})" for k in rare]
        if small:
            warn(f"protected attribute {name!r} has groups with fewer than {SMALL_GROUP} training "
                 f"rows: {', '.join(small[:5])}; their means, which the constraint bounds, are "
                 f"mostly noise (consider merging rare groups).", UserWarning)


def split_columns(X, protected_indices, room=0):
    """:meth:`InputSplitter.split` of an X that is neither a DataFrame nor a numeric array (a
    list, an object array): through Python objects, ``COLUMN_BLOCK`` columns at a time. An
    array of dates, durations or complex numbers raises, as such a frame column does."""
    values = np.asarray(X, dtype=object)
    kept = np.delete(np.arange(values.shape[1]), protected_indices)
    if isinstance(X, np.ndarray) and len(kept):
        _numeric(lambda: _refuse_non_numbers(int(kept[0]), X.dtype))
    rest = np.empty((len(values), len(kept) + room))
    for start in range(0, len(kept), COLUMN_BLOCK):
        block = values[:, kept[start:start + COLUMN_BLOCK]]
        rest[:, start:start + block.shape[1]] = _numeric(lambda: block.astype(np.float64))
    return rest, [values[:, i] for i in protected_indices]


def _peaks(features):
    """The largest magnitude in every column of ``features`` (0 without rows; NaN where the
    column has one), without a temporary of the features' size."""
    return np.maximum(features.max(axis=0, initial=0.0), -features.min(axis=0, initial=0.0))


def check_float32(features, columns, feature_names):
    """Raise, naming the columns of X (``columns``: their positions; ``feature_names``: X's
    column names or None), where a finite value overflows the network's float32 inputs: the
    network would turn it into NaN."""
    _check_peaks(_peaks(features), columns, feature_names)


def _check_peaks(peak, columns, feature_names):
    """:func:`check_float32` from the largest magnitude of every column."""
    over = np.flatnonzero(peak >= FLOAT32_OVERFLOW)
    if len(over):
        named = [str(feature_names[columns[j]]) if feature_names is not None
                 else int(columns[j]) for j in over]
        raise ValueError(
            f"X has values beyond float32's range (about 3.4e38), the network's input "
            f"precision, in column(s) {named}; rescale them, e.g. with a StandardScaler."
        )


def _float_columns(frame):
    """``frame`` as float64 (NaN where pandas has a missing value); a column of dates,
    durations or complex numbers (or categories of them), which numpy turns into numbers
    silently, raises."""
    for name, dtype in frame.dtypes.items():
        _refuse_non_numbers(name, dtype)
    return frame.to_numpy(dtype=np.float64, na_value=np.nan)


def _refuse_non_numbers(name, dtype):
    """Raise TypeError for a column ``name`` of dates, durations or complex numbers (or
    categories of them): numpy would turn it into numbers silently."""
    values = dtype.categories.dtype if isinstance(dtype, pd.CategoricalDtype) else dtype
    if values.kind in "mMc":
        raise TypeError(f"column {name!r} holds {dtype}")


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


class GroupEncoder:
    """Integer codes for the groups of every protected attribute, learned once.

    ``fit`` records the sorted distinct values of every column (each needs at least two);
    ``transform`` maps values to their position, and a value not seen in ``fit`` raises or
    takes the code ``len(categories)`` (``handle_unknown="new_group"``). With
    ``intersectional=True``, :meth:`constraint_groups` combines the attributes into one, coded
    stably across batches.
    """

    def __init__(self, names, intersectional=False):
        self.names = list(names)
        self.intersectional = intersectional

    def __getstate__(self):
        # without the caches, rebuilt when used: they hold pandas dtypes, which skops cannot
        # store (skfair._persistence)
        return {**self.__dict__, "_lookup_cache": None, "_category_cache": None}

    def fit(self, columns, known=None):
        """Learn the values of every column (and, per column, those of ``known``)."""
        columns = _as_frame(columns, self.names)
        if known is not None:
            if len(known) != len(self.names):
                raise ValueError(f"groups must list the values of each of the {len(self.names)} "
                                 f"protected attributes {self.names}; got {len(known)} list(s).")
        self.categories_, self._lookup_cache, self._category_cache = [], None, None
        for j, name in enumerate(self.names):
            values = columns[name]
            if known is not None:
                values = pd.concat([values.astype(object),
                                    pd.Series(list(known[j]), dtype=object)], ignore_index=True)
            if values.isna().any():
                raise ValueError(f"protected attribute {name!r} contains missing values.")
            categories = np.array(sorted(pd.unique(values), key=_sort_key), dtype=object)
            if any(isinstance(v, (float, np.floating)) and np.isinf(v) for v in categories):
                raise ValueError(f"protected attribute {name!r} contains infinite values; "
                                 f"groups are labels such as 0/1 or strings.")
            if len(categories) < 2:
                raise ValueError(
                    f"protected attribute {name!r} has a single value ({categories[0]!r}) in the "
                    f"training data; fairness between groups needs at least two."
                )
            self.categories_.append(categories)
        return self

    def transform(self, columns, handle_unknown="error"):
        """Group codes of every attribute, a LongTensor of shape (n, n_attributes).

        A value not seen in fit raises :class:`ValueError` (``handle_unknown="error"``), or
        (``"new_group"``) takes the code ``len(categories)`` of its attribute, with one warning
        per call naming the attributes and their unseen values.
        """
        return torch.from_numpy(self.transform_columns(
            list(_as_objects(columns, len(self.names)).T), handle_unknown))

    def transform_columns(self, columns, handle_unknown="error"):
        """:meth:`transform` of a 1-D column per attribute, numpy or pandas arrays as X held
        them, as a numpy array: a categorical column is coded from its categories, without
        converting its values, and any other with more than ``LOOKUP_ROWS`` rows from its
        distinct values."""
        found = [self._value_codes(j, column) for j, column in enumerate(columns)]
        codes = np.empty((len(columns[0]), len(self.names)), dtype=np.int64)
        for j, (positions, _, value_codes) in enumerate(found):
            codes[:, j] = value_codes[:-1] if positions is None else value_codes[positions]
        if codes.min(initial=0) < 0:
            self._code_unseen(codes, found, handle_unknown)
        return codes

    def _value_codes(self, j, column):
        """``(positions, values, value_codes)`` of attribute ``j``'s column: the column as
        positions into its distinct ``values`` (None: ``values`` is the column itself, as
        Python objects) and the code of every value (-1: not seen in fit), then a -1 for the
        position -1 of a missing value."""
        if isinstance(column, pd.Categorical):
            cache = getattr(self, "_category_cache", None)
            if cache is None:
                cache = self._category_cache = [None] * len(self.names)
            # the frames of a stream share their columns' dtype: its codes are looked up once
            dtype, values, value_codes = cache[j] or (None, None, None)
            if dtype is not column.dtype:
                values = np.asarray(column.categories, dtype=object)
                value_codes = self._lookup(j, values)
                cache[j] = (column.dtype, values, value_codes)
            return column.codes, values, value_codes
        if len(column) > LOOKUP_ROWS:
            positions, distinct = pd.factorize(column)
            values = np.asarray(distinct, dtype=object)
            return positions, values, self._lookup(j, values)
        values = np.asarray(column, dtype=object)
        return None, values, self._lookup(j, values)

    def _lookup(self, j, values):
        """The codes of attribute ``j``'s ``values`` (-1: not seen in fit), then a -1."""
        if getattr(self, "_lookup_cache", None) is None:
            self._lookup_cache = [{v: i for i, v in enumerate(c)} for c in self.categories_]
        lookup = self._lookup_cache[j]
        return np.array([*(lookup.get(v, -1) for v in values), -1], dtype=np.int64)

    def _code_unseen(self, codes, found, handle_unknown):
        """The rows of ``codes`` that are -1 (:meth:`transform_columns`): raise on a missing
        value, and on a value not seen in fit unless ``handle_unknown="new_group"``, which
        codes it ``len(categories)`` with one warning naming these values."""
        unseen_values = {}
        for j, (name, (positions, values, _)) in enumerate(zip(self.names, found)):
            if pd.isna(values).any() if positions is None else (positions < 0).any():
                raise ValueError(f"protected attribute {name!r} contains missing values.")
            unseen_rows = codes[:, j] < 0
            if not unseen_rows.any():
                continue
            present = values[unseen_rows] if positions is None else values[
                positions[unseen_rows]]
            unseen = sorted(set(present), key=_sort_key)
            if handle_unknown != "new_group":
                raise ValueError(
                    f"protected attribute {name!r} has values not seen in fit: {unseen[:5]}; "
                    f"known values: {list(self.categories_[j])}. To predict such rows as one "
                    f"extra group, set handle_unknown='new_group'; partial_fit learns every "
                    f"value from the groups of its first call."
                )
            codes[unseen_rows, j] = len(self.categories_[j])
            unseen_values[name] = unseen
        listed = "; ".join(f"{name!r}: {unseen[:5]}" for name, unseen in unseen_values.items())
        warn(f"protected attribute values not seen in fit: {listed}; each attribute's unseen "
             f"values form one extra group, constrained like the others "
             f"(handle_unknown='new_group').", UserWarning)

    def fit_transform(self, columns):
        return self.fit(columns).transform(columns)

    def constraint_groups(self, codes):
        """The groups the constraint compares: the codes, or their intersection, stably coded
        (a combination holding an unseen value's code past those of every known one)."""
        if not self.intersectional:
            return codes
        sizes = [len(c) for c in self.categories_]
        unseen = (codes == torch.tensor(sizes)).any(dim=1)
        known = intersect_groups(codes, sizes)
        if not bool(unseen.any()):
            return known
        extended = math.prod(sizes) + intersect_groups(codes, [k + 1 for k in sizes])
        return torch.where(unseen[:, None], extended, known)

    def describe(self, row):
        """One row of :meth:`constraint_groups` codes as the user knows its groups, such as
        ``"sex='F', race=<unseen>"`` (``<unseen>``: the group of values not seen in fit)."""
        row = [int(code) for code in row]
        if self.intersectional:
            sizes = [len(c) for c in self.categories_]
            code = row[0]
            if code >= math.prod(sizes):
                code, sizes = code - math.prod(sizes), [k + 1 for k in sizes]
            row = []
            for k in reversed(sizes):
                code, digit = divmod(code, k)
                row.insert(0, digit)
        return ", ".join(
            f"{name}={categories[code]!r}" if code < len(categories) else f"{name}=<unseen>"
            for name, categories, code in zip(self.names, self.categories_, row))

    def group_names(self):
        """Per attribute (or for the intersection), the value of every code, for reports."""
        if not self.intersectional:
            return list(zip(self.names, self.categories_))
        combos = [()]
        for categories in self.categories_:
            combos = [c + (v,) for c in combos for v in categories]
        values = np.empty(len(combos), dtype=object)
        values[:] = combos  # an array of tuples, not a 2-D array
        return [(" & ".join(self.names), values)]


def _as_objects(columns, n_columns):
    values = columns.to_numpy(dtype=object) if isinstance(columns, pd.DataFrame) else np.asarray(
        columns, dtype=object)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[1] != n_columns:
        raise ValueError(f"expected {n_columns} protected column(s); got shape {values.shape}.")
    return values


def _as_frame(columns, names):
    if isinstance(columns, pd.DataFrame):
        frame = columns.copy()
        frame.columns = names
        return frame
    columns = np.asarray(columns, dtype=object)
    if columns.ndim == 1:
        columns = columns[:, None]
    return pd.DataFrame(columns, columns=names)


def _sort_key(value):
    # Mixed types (e.g. 0 and "a") still sort deterministically.
    return (type(value).__name__, value)
