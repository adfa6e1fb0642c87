"""Protected attributes at the scikit-learn boundary: finding the columns, encoding groups."""

import numbers

import numpy as np
import pandas as pd
import torch

from .constraints import intersect_groups


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
    if isinstance(protected_attributes, (str, numbers.Integral)):
        protected_attributes = [protected_attributes]
    attributes = list(protected_attributes)
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


class GroupEncoder:
    """Integer codes for the groups of every protected attribute, learned once.

    ``fit`` records the sorted distinct values of every column (each needs at least two);
    ``transform`` maps values to their position, raising on a value not seen in ``fit``. With
    ``intersectional=True``, :meth:`constraint_groups` combines the attributes into one, coded
    stably across batches.
    """

    def __init__(self, names, intersectional=False):
        self.names = list(names)
        self.intersectional = intersectional

    def fit(self, columns):
        columns = _as_frame(columns, self.names)
        self.categories_, self._index_cache, self._lookup_cache = [], None, None
        for name in self.names:
            values = columns[name]
            if values.isna().any():
                raise ValueError(f"protected attribute {name!r} contains missing values.")
            categories = np.array(sorted(pd.unique(values), key=_sort_key), dtype=object)
            if len(categories) < 2:
                raise ValueError(
                    f"protected attribute {name!r} has a single value ({categories[0]!r}) in the "
                    f"training data; fairness between groups needs at least two."
                )
            self.categories_.append(categories)
        return self

    def transform(self, columns):
        """Group codes of every attribute, a LongTensor of shape (n, n_attributes)."""
        values = _as_objects(columns, len(self.names))
        codes = np.empty(values.shape, dtype=np.int64)
        for j, (name, index) in enumerate(zip(self.names, self._indexes())):
            column = values[:, j]
            if pd.isna(column).any():
                raise ValueError(f"protected attribute {name!r} contains missing values.")
            if len(column) <= 64:  # a dict look-up beats pandas' machinery on small batches
                lookup = self._lookups()[j]
                codes[:, j] = [lookup.get(v, -1) for v in column]
            else:
                codes[:, j] = index.get_indexer(column)
            if (codes[:, j] < 0).any():
                unseen = sorted(set(column[codes[:, j] < 0]), key=_sort_key)
                raise ValueError(
                    f"protected attribute {name!r} has values not seen in fit: {unseen[:5]}; "
                    f"known values: {list(index)}."
                )
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
        """The groups the constraint compares: the codes, or their intersection, stably coded."""
        if not self.intersectional:
            return codes
        return intersect_groups(codes, [len(c) for c in self.categories_])

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
