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


#: DataFrames of at most this many rows are split through one object array (see split_columns)
SMALL_FRAME = 32
#: columns converted at once by split_columns (its temporary is this many columns of X)
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
        rest, protected = split_columns(X, self.indices)
        if len(rest) == 0:
            raise ValueError("Found array with 0 sample(s) while a minimum of 1 is required.")
        self._check_features(rest)
        self.encoder = GroupEncoder(self.names, self.intersectional).fit(protected,
                                                                         known_groups)
        codes = self.encoder.transform(protected)
        _warn_about_groups(self.encoder, codes)
        return self._inputs(rest, codes)

    def transform(self, X, handle_unknown="error"):
        """``(features, codes)`` of ``X``; see the class docstring (``handle_unknown``: see
        :meth:`GroupEncoder.transform`)."""
        rest, protected = split_columns(X, self.indices, room=self._one_hot_width())
        self._check_features(rest[:, :len(self.feature_indices)])
        return self._inputs(rest, self.encoder.transform(protected, handle_unknown))

    def _check_features(self, rest):
        if len(rest) == 0:
            return
        # per column, without a temporary of X's size: a NaN makes its column's maximum NaN
        high, low = rest.max(axis=0), rest.min(axis=0)
        if not (np.isfinite(high).all() and np.isfinite(low).all()):
            problem = "NaN" if np.isnan(high).any() else "infinity"
            raise ValueError(f"Input X contains {problem} in a column that is not protected.")
        _check_peaks(np.maximum(high, -low), self.feature_indices, self.feature_names)

    def _one_hot_width(self):
        """The number of network inputs of the protected attributes (0 when excluded)."""
        if self.exclude_protected:
            return 0
        return sum(1 if len(c) == 2 else len(c) for c in self.encoder.categories_)

    def _inputs(self, rest, codes):
        """The network's inputs: ``rest`` with the protected attributes' encoding written into
        its spare columns (those :meth:`transform` left), or appended to it."""
        n_rest = len(self.feature_indices)
        if rest.shape[1] > n_rest:
            rest[:, n_rest:] = self.one_hot(codes)
            return rest, codes
        if self.exclude_protected:
            return rest, codes
        return np.hstack([rest, self.one_hot(codes)]), codes

    def one_hot(self, codes):
        """Protected attributes as network inputs: a 0/1 column for binary ones, else one-hot;
        the group of unseen values (code ``k``) as the mean of the ``k`` known encodings."""
        blocks = []
        for j, categories in enumerate(self.encoder.categories_):
            column = codes[:, j].numpy()
            k = len(categories)
            if k == 2:
                blocks.append(np.array([0.0, 1.0, 0.5])[column][:, None])
            else:
                blocks.append(np.vstack([np.eye(k), np.full((1, k), 1.0 / k)])[column])
        return np.hstack(blocks)


def _warn_about_groups(encoder, codes):
    """Warn about attributes with many distinct values and groups with few training rows."""
    for j, (name, categories) in enumerate(zip(encoder.names, encoder.categories_)):
        if len(categories) > MANY_GROUPS:
            warn(f"protected attribute {name!r} has {len(categories)} distinct values, each a "
                 f"group; if it is numeric, bin it first (e.g. with pandas.cut).", UserWarning)
            continue
        counts = np.bincount(codes[:, j].numpy(), minlength=len(categories))
        # (a group known but absent, as partial_fit's first chunk may have, is not rare)
        rare = np.flatnonzero((counts > 0) & (counts < SMALL_GROUP))
        small = [f"{categories[k]!r} ({counts[k]})" for k in rare]
        if small:
            warn(f"protected attribute {name!r} has groups with fewer than {SMALL_GROUP} training "
                 f"rows: {', '.join(small[:5])}; their means, which the constraint bounds, are "
                 f"mostly noise (consider merging rare groups).", UserWarning)


def split_columns(X, protected_indices, room=0):
    """``(rest, protected)``: the columns of X that are not protected as a row-major float64
    array (NaN where pandas has a missing value) with ``room`` more columns left unset (for the
    caller to fill), and the protected ones as an object array.

    The float64 array is written column block by column block: a DataFrame's columns go
    straight to it without a round trip through Python objects (which costs seconds and
    gigabytes at a million rows), and with ``room`` (prediction, once the groups are known) no
    second copy is made to append the protected attributes' encoding. Only a frame of a few rows (a stream's) goes through one object
    array, cheaper than pandas' column selection at that size.
    """
    if isinstance(X, pd.DataFrame) and len(X) > SMALL_FRAME:
        kept = np.delete(np.arange(X.shape[1]), protected_indices)
        rest = np.empty((len(X), len(kept) + room))
        for start in range(0, len(kept), COLUMN_BLOCK):
            block = X.iloc[:, kept[start:start + COLUMN_BLOCK]]
            rest[:, start:start + block.shape[1]] = _numeric(
                lambda: block.to_numpy(dtype=np.float64, na_value=np.nan))
        return rest, X.iloc[:, protected_indices].to_numpy(dtype=object)
    if isinstance(X, pd.DataFrame):
        values = X.to_numpy(dtype=object)
    elif isinstance(X, np.ndarray) and X.dtype.kind in "biuf":
        values = X
    else:
        values = np.asarray(X, dtype=object)
    kept = np.delete(np.arange(values.shape[1]), protected_indices)
    rest = np.empty((len(values), len(kept) + room))
    if values.dtype != object:
        # each run of adjacent kept columns in one slice assignment (no gathered copy)
        runs = np.flatnonzero(np.diff(kept) != 1) + 1
        for part in np.split(np.arange(len(kept)), runs):
            if len(part):
                first = kept[part[0]]
                rest[:, part[0]:part[-1] + 1] = values[:, first:first + len(part)]
        return rest, values[:, protected_indices].astype(object)
    for start in range(0, len(kept), COLUMN_BLOCK):
        block = values[:, kept[start:start + COLUMN_BLOCK]]
        if isinstance(X, pd.DataFrame):  # missing values as NaN, as the block path has them
            block[pd.isna(block)] = np.nan
        rest[:, start:start + block.shape[1]] = _numeric(lambda: block.astype(np.float64))
    return rest, values[:, protected_indices].astype(object)


def check_float32(features, columns, feature_names):
    """Raise, naming the columns of X (``columns``: their positions; ``feature_names``: X's
    column names or None), where a finite value overflows the network's float32 inputs: the
    network would turn it into NaN."""
    high = features.max(axis=0, initial=0.0)
    low = features.min(axis=0, initial=0.0)
    _check_peaks(np.maximum(high, -low), columns, feature_names)


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
        # without the caches, rebuilt when used: they hold pandas indexes, which skops cannot
        # store (skfair._persistence)
        return {**self.__dict__, "_index_cache": None, "_lookup_cache": None}

    def fit(self, columns, known=None):
        """Learn the values of every column (and, per column, those of ``known``)."""
        columns = _as_frame(columns, self.names)
        if known is not None:
            if len(known) != len(self.names):
                raise ValueError(f"groups must list the values of each of the {len(self.names)} "
                                 f"protected attributes {self.names}; got {len(known)} list(s).")
        self.categories_, self._index_cache, self._lookup_cache = [], None, None
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
        values = _as_objects(columns, len(self.names))
        codes = np.empty(values.shape, dtype=np.int64)
        unseen_values = {}
        for j, (name, index) in enumerate(zip(self.names, self._indexes())):
            column = values[:, j]
            if pd.isna(column).any():
                raise ValueError(f"protected attribute {name!r} contains missing values.")
            if len(column) <= 64:  # a dict look-up beats pandas' machinery on small batches
                lookup = self._lookups()[j]
                codes[:, j] = [lookup.get(v, -1) for v in column]
            else:
                codes[:, j] = index.get_indexer(column)
            unseen_rows = codes[:, j] < 0
            if not unseen_rows.any():
                continue
            unseen = sorted(set(column[unseen_rows]), key=_sort_key)
            if handle_unknown != "new_group":
                raise ValueError(
                    f"protected attribute {name!r} has values not seen in fit: {unseen[:5]}; "
                    f"known values: {list(index)}. To predict such rows as one extra group, "
                    f"set handle_unknown='new_group'; partial_fit learns every value from the "
                    f"groups of its first call."
                )
            codes[unseen_rows, j] = len(index)
            unseen_values[name] = unseen
        if unseen_values:
            listed = "; ".join(f"{name!r}: {unseen[:5]}" for name, unseen in
                               unseen_values.items())
            warn(f"protected attribute values not seen in fit: {listed}; each attribute's "
                 f"unseen values form one extra group, constrained like the others "
                 f"(handle_unknown='new_group').", UserWarning)
        return torch.from_numpy(codes)

    def _indexes(self):
        # Built once: transform runs for every batch of a stream.
        if getattr(self, "_index_cache", None) is None:
            self._index_cache = [pd.Index(c, dtype=object) for c in self.categories_]
        return self._index_cache

    def _lookups(self):
        if getattr(self, "_lookup_cache", None) is None:
            self._lookup_cache = [{v: i for i, v in enumerate(c)} for c in self.categories_]
        return self._lookup_cache

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
