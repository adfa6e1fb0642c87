"""Finding protected columns and encoding their groups."""

import re

import numpy as np
import pandas as pd
import pytest

from skfair._validation import GroupEncoder, resolve_protected


def test_resolve_by_name_position_and_transformer_prefix():
    names = ["num__age", "cat__job_a", "remainder__sex", "race"]
    assert resolve_protected(["race"], names, 4) == [3]
    assert resolve_protected("sex", names, 4) == [2]
    assert resolve_protected([0, -1], None, 4) == [0, 3]


def test_resolve_errors_list_the_columns():
    with pytest.raises(ValueError, match=r"'gender' is not a column of X; the columns are"):
        resolve_protected(["gender"], ["age", "sex"], 2)
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_protected(["sex"], ["a__sex", "b__sex"], 2)
    with pytest.raises(ValueError, match="no column names"):
        resolve_protected(["sex"], None, 2)
    with pytest.raises(ValueError, match="out of range"):
        resolve_protected([5], None, 2)
    with pytest.raises(ValueError, match="same column twice"):
        resolve_protected(["sex", 1], ["age", "sex"], 2)
    with pytest.raises(ValueError, match="at least one"):
        resolve_protected([], ["age"], 1)


def test_group_encoder_learns_sorted_values_and_rejects_unseen():
    frame = pd.DataFrame({"sex": ["M", "F", "F"], "race": pd.Categorical(["b", "a", "c"])})
    enc = GroupEncoder(["sex", "race"]).fit(frame)
    codes = enc.transform(frame).numpy()
    np.testing.assert_array_equal(codes, [[1, 1], [0, 0], [0, 2]])
    with pytest.raises(ValueError, match=r"'race' has values not seen in fit: \['d'\]"):
        enc.transform(pd.DataFrame({"sex": ["M"], "race": ["d"]}))
    assert [list(c) for _, c in enc.group_names()] == [["F", "M"], ["a", "b", "c"]]


def test_group_encoder_errors():
    with pytest.raises(ValueError, match="single value"):
        GroupEncoder(["sex"]).fit(pd.DataFrame({"sex": ["M", "M"]}))
    with pytest.raises(ValueError, match="missing values"):
        GroupEncoder(["sex"]).fit(pd.DataFrame({"sex": ["M", None]}))


def test_intersectional_codes_are_stable_across_batches():
    enc = GroupEncoder(["a", "b"], intersectional=True).fit(
        np.array([[0, "x"], [1, "y"], [1, "z"]], dtype=object))
    first = enc.constraint_groups(enc.transform(np.array([[1, "z"]], dtype=object)))
    both = enc.constraint_groups(enc.transform(np.array([[0, "x"], [1, "z"]], dtype=object)))
    assert int(first[0, 0]) == int(both[1, 0]) == 1 * 3 + 2
    name, values = enc.group_names()[0]
    assert name == "a & b" and values[int(first[0, 0])] == (1, "z")


def _mixed_frame(n, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "x": rng.normal(size=n),
        "count": rng.integers(0, 5, n),                      # int64
        "small": rng.normal(size=n).astype(np.float32),      # float32
        "flag": rng.integers(0, 2, n).astype(bool),
        "sex": pd.Categorical(rng.choice(["F", "M"], n)),   # categorical protected column
        "race": rng.choice(["a", "b", "c"], n),              # object protected column
    })


@pytest.mark.parametrize("column_block", [1, 3, 16])
def test_large_and_small_frames_split_into_the_same_features_and_groups(column_block,
                                                                         monkeypatch):
    """Frames above LOOKUP_ROWS rows have their protected values coded from their distinct
    values, smaller ones looked up one by one: both give the same network inputs and group
    codes (the protected attributes' encoding written into the columns the split left for
    it), for any number of column blocks of the columns converted through pandas."""
    from skfair import FairNeuralClassifier, _validation
    from skfair._validation import LOOKUP_ROWS

    monkeypatch.setattr(_validation, "COLUMN_BLOCK", column_block)
    X = _mixed_frame(200)
    y = (X["x"] > 0).astype(int)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], max_epochs=1,
                               random_state=0).fit(X, y)
    features, codes = clf._validate_X(X, reset=False)
    assert len(X) > LOOKUP_ROWS
    for start in range(0, 200, LOOKUP_ROWS):
        part = X.iloc[start:start + LOOKUP_ROWS]
        small_features, small_codes = clf._validate_X(part, reset=False)
        np.testing.assert_array_equal(small_features, features[start:start + LOOKUP_ROWS])
        np.testing.assert_array_equal(small_codes, codes[start:start + LOOKUP_ROWS])
    numeric = X.assign(sex=X["sex"].cat.codes, race=X["race"].map({"a": 0, "b": 1, "c": 2}))
    from_array = FairNeuralClassifier(protected_attributes=[4, 5], max_epochs=1,
                                      random_state=0).fit(numeric.to_numpy(np.float64), y)
    array_features, _ = from_array._validate_X(numeric.to_numpy(np.float64), reset=False)
    np.testing.assert_array_equal(array_features[:, :4], features[:, :4])


@pytest.mark.parametrize("n", [5, 200])
@pytest.mark.parametrize("column, value, match", [
    ("x", "text", "must be numeric"),
    ("x", np.nan, "contains NaN"),
    ("x", np.inf, "contains infinity"),
    ("x", 1e39, r"beyond float32's range .*\['x'\]"),
    ("count", pd.NA, "contains NaN"),
])
@pytest.mark.parametrize("column_block", [1, 16])
def test_both_frame_paths_raise_the_same_errors(n, column, value, match, column_block,
                                                monkeypatch):
    from skfair import FairNeuralClassifier, _validation

    monkeypatch.setattr(_validation, "COLUMN_BLOCK", column_block)
    X = _mixed_frame(200)
    y = (X["x"] > 0).astype(int)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], max_epochs=1,
                               random_state=0).fit(X, y)
    bad = X.iloc[:n].copy()
    bad[column] = bad[column].astype("Int64" if value is pd.NA else object)
    bad.iloc[n // 2, bad.columns.get_loc(column)] = value
    with pytest.raises(ValueError, match=match):
        clf.predict_proba(bad)


@pytest.mark.parametrize("n", [1, 200])
@pytest.mark.parametrize("value", [pd.Timestamp("2020-01-01"), pd.Timedelta("1D"),
                                   pd.Timestamp("2020-01-01", tz="UTC"), 1 + 2j,
                                   "category", "timestamp[ns][pyarrow]"])
def test_dates_durations_and_complex_features_are_refused_not_read_as_numbers(n, value):
    """numpy turns dates and durations into counts of time units and drops an imaginary part:
    such a column of X is refused, in fit and in prediction, for a stream's row as for many."""
    from skfair import FairNeuralClassifier

    X = _mixed_frame(200)
    y = (X["x"] > 0).astype(int)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], max_epochs=1,
                               random_state=0).fit(X, y)
    bad = X.iloc[:n].copy()
    if isinstance(value, str):  # categories of dates, or pyarrow's dates
        if value.endswith("[pyarrow]"):
            pytest.importorskip("pyarrow")
        bad["x"] = pd.Series([pd.Timestamp("2020-01-01")] * n, index=bad.index, dtype=value)
    else:
        bad["x"] = [value] * n
    with pytest.raises(ValueError, match=r"must be numeric \(column 'x' holds"):
        clf.predict_proba(bad)
    with pytest.raises(ValueError, match=r"must be numeric \(column 'x' holds"):
        FairNeuralClassifier(protected_attributes=["sex", "race"], max_epochs=1).fit(
            bad, y.iloc[:n])


@pytest.mark.parametrize("dtype", ["datetime64[ns]", "timedelta64[ns]", "complex128"])
def test_arrays_of_dates_durations_or_complex_numbers_are_refused(dtype):
    """A numpy array of dates, durations or complex numbers as X: refused like such a frame
    column (numpy would read them as counts of time units, or drop the imaginary part)."""
    from skfair import FairNeuralClassifier

    rng = np.random.default_rng(0)
    X = np.c_[rng.normal(size=(50, 2)), rng.integers(0, 2, 50)]
    y = (X[:, 0] > 0).astype(int)
    with pytest.raises(ValueError, match=rf"must be numeric \(column 0 holds {re.escape(dtype)}\)"):
        FairNeuralClassifier(protected_attributes=[2], max_epochs=1).fit(
            (X * 1e9).astype(dtype), y)


def test_splitter_fit_transform_and_transform_agree_on_frames_and_arrays():
    """The splitter fitted on a frame gives the same features and codes for the same rows
    later, by name or by position, and appends the protected columns as network inputs (0/1
    for a binary attribute, one-hot otherwise) unless they are excluded."""
    from skfair._validation import InputSplitter

    frame = pd.DataFrame({"x": [0.5, -1.0, 2.0, 3.0], "sex": ["M", "F", "F", "M"],
                          "race": ["b", "a", "c", "a"]})
    splitter = InputSplitter(["sex", 2])
    with pytest.warns(UserWarning, match="fewer than 10 training rows"):  # four rows
        features, codes = splitter.fit_transform(frame, np.array(frame.columns), 3)
    assert splitter.names == ["sex", "race"] and splitter.indices == [1, 2]
    np.testing.assert_array_equal(codes.numpy(), [[1, 1], [0, 0], [0, 2], [1, 0]])
    np.testing.assert_array_equal(features, [[0.5, 1, 0, 1, 0], [-1.0, 0, 1, 0, 0],
                                             [2.0, 0, 0, 0, 1], [3.0, 1, 1, 0, 0]])
    again, again_codes = splitter.transform(frame.iloc[::-1])
    np.testing.assert_array_equal(again, features[::-1])
    np.testing.assert_array_equal(again_codes, codes.numpy()[::-1])
    positional = InputSplitter([1, 2], exclude_protected=True)
    with pytest.warns(UserWarning, match="fewer than 10 training rows"):
        features, codes = positional.fit_transform(frame.to_numpy(dtype=object), None, 3)
    np.testing.assert_array_equal(features, [[0.5], [-1.0], [2.0], [3.0]])
    assert positional.names == ["1", "2"]


def test_protected_frame_names_columns_as_the_user_did():
    """metrics.protected_columns and the plots read the protected columns through the same
    name resolution as fit: a name matches a ColumnTransformer prefix, a position takes the
    column's own name."""
    from skfair._validation import protected_frame

    frame = pd.DataFrame({"remainder__sex": ["M", "F"], "age": [30, 40], "race": ["a", "b"]})
    out = protected_frame(["sex", 2], frame)
    assert list(out.columns) == ["sex", "race"]
    np.testing.assert_array_equal(out.to_numpy(), [["M", "a"], ["F", "b"]])
    assert list(protected_frame(0, frame.to_numpy()).columns) == ["0"]


def test_fit_warns_about_many_values_and_small_groups_and_refuses_infinite_groups():
    import warnings

    from skfair import FairNeuralClassifier

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=300), "age": rng.integers(18, 70, 300),
                      "g": ["a"] * 295 + ["b"] * 5})
    y = (X["x"] > 0).astype(int)
    with pytest.warns(UserWarning, match=r"'age' has \d+ distinct values.*bin it first"):
        FairNeuralClassifier(protected_attributes=["age"], max_epochs=1).fit(X[["x", "age"]], y)
    with pytest.warns(UserWarning, match=r"'g' has groups with fewer than 10 training rows: "
                                         r"'b' \(5\)"):
        FairNeuralClassifier(protected_attributes=["g"], max_epochs=1).fit(X[["x", "g"]], y)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="protected attribute")  # ten rows: none
        FairNeuralClassifier(protected_attributes=["g"], max_epochs=1).fit(
            X[["x", "g"]].assign(g=["a"] * 290 + ["b"] * 10), y)
    clf = FairNeuralClassifier(protected_attributes=["g"], max_epochs=1)
    with pytest.raises(ValueError, match="'g' contains infinite values"):
        clf.fit(X[["x"]].assign(g=np.where(X["x"] > 0, 1.0, np.inf)), y)
    assert not hasattr(clf, "module_")


# ------------------------------------------------------------------------------------------------
# Protected values not seen in fit (handle_unknown)
FAST = dict(hidden_layer_sizes=(8,), max_epochs=5, batch_size=128, learning_rate=0.01,
            random_state=0)


def _groups_frame(n=600, seed=0):
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    race = rng.choice(["a", "b", "c"], n)
    x = rng.normal(size=n) + 0.8 * (sex == "M")
    y = (x + 0.5 * (race == "b") + rng.normal(size=n) > 0.5).astype(int)
    return pd.DataFrame({"x": x, "sex": sex, "race": race}), pd.Series(y)


def test_group_encoder_codes_unseen_values_as_one_extra_group_with_one_warning():
    frame = pd.DataFrame({"sex": ["M", "F", "F"], "race": ["b", "a", "c"]})
    enc = GroupEncoder(["sex", "race"]).fit(frame)
    new = pd.DataFrame({"sex": ["X", "F", "Y", "M"], "race": ["a", "d", "e", "d"]})
    with pytest.raises(ValueError, match=r"'sex' has values not seen in fit: \['X', 'Y'\].*"
                                         r"handle_unknown='new_group'"):
        enc.transform(new)
    for values in (new, new.to_numpy(dtype=object)):  # the dict and the pandas look-ups
        with pytest.warns(UserWarning) as record:
            codes = enc.transform(values, "new_group").numpy()
        assert len(record) == 1
        assert ("'sex': ['X', 'Y']; 'race': ['d', 'e']" in str(record[0].message))
        np.testing.assert_array_equal(codes, [[2, 0], [0, 3], [2, 3], [1, 3]])
    many = pd.concat([new] * 20, ignore_index=True)  # above the dict look-up's size
    with pytest.warns(UserWarning, match="not seen in fit"):
        np.testing.assert_array_equal(enc.transform(many, "new_group").numpy(),
                                      np.tile(codes, (20, 1)))


def test_unseen_groups_enter_the_network_as_the_mean_of_the_known_encodings():
    """A 0/1 column has no all-zero code naming no group: the unseen group is 0.5 there, and
    1 / k in each of k one-hot columns."""
    from skfair._validation import InputSplitter

    frame = pd.DataFrame({"x": np.arange(20.0), "sex": ["M", "F"] * 10,
                          "race": ["a", "b", "c", "d"] * 5})
    splitter = InputSplitter(["sex", "race"])
    with pytest.warns(UserWarning, match="fewer than 10"):
        splitter.fit(frame, np.array(frame.columns), 3)
    with pytest.warns(UserWarning, match="not seen in fit"):
        features, _ = splitter.transform(
            pd.DataFrame({"x": [1.0, 2.0], "sex": ["X", "F"], "race": ["a", "z"]}),
            "new_group")
    np.testing.assert_array_equal(features, [[1.0, 0.5, 1, 0, 0, 0],
                                             [2.0, 0.0, 0.25, 0.25, 0.25, 0.25]])


def test_intersectional_codes_of_unseen_combinations_leave_the_known_ones_unchanged():
    enc = GroupEncoder(["a", "b"], intersectional=True).fit(
        np.array([[0, "x"], [1, "y"], [1, "z"]], dtype=object))
    rows = np.array([[1, "z"], [2, "z"], [0, "w"], [2, "w"], [0, "x"]], dtype=object)
    with pytest.warns(UserWarning, match="not seen in fit"):
        cells = enc.constraint_groups(enc.transform(rows, "new_group"))[:, 0].tolist()
    # known: 3 * a + b over 2 x 3 values; with an unseen value: 6 + 4 * a + b over 3 x 4
    assert cells == [5, 6 + 4 * 2 + 2, 6 + 0 + 3, 6 + 4 * 2 + 3, 0]
    assert [enc.describe([c]) for c in cells] == [
        "a=1, b='z'", "a=<unseen>, b='z'", "a=0, b=<unseen>", "a=<unseen>, b=<unseen>",
        "a=0, b='x'"]


def _group_means(values, groups):
    groups = pd.Series(groups).reset_index(drop=True)
    return pd.Series(values).groupby(groups).mean()


@pytest.mark.parametrize("intersectional", [False, True])
def test_new_group_is_constrained_like_any_group_in_an_exact_batch(intersectional):
    """The guarantee with unseen values as the docs read it: all of an attribute's unseen
    values (here two, 'X' and 'Y') pooled into one group, its numpy mean within epsilon of
    every other group's mean (of the crossed cells with intersectional=True)."""
    from skfair import FairNeuralClassifier

    X, y = _groups_frame()
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], epsilon=0.02,
                               intersectional=intersectional, handle_unknown="new_group",
                               **FAST).fit(X, y)
    test, _ = _groups_frame(300, seed=1)
    test.loc[:11, "sex"] = ["X", "Y"] * 6
    test.loc[6:20, "race"] = "z"
    with pytest.warns(UserWarning, match=r"'sex': \['X', 'Y'\]; 'race': \['z'\]"):
        p = clf.predict_proba(test)[:, 1]
    sex = test["sex"].where(test["sex"].isin(["F", "M"]), "unseen")
    race = test["race"].where(test["race"].isin(["a", "b", "c"]), "unseen")
    partitions = [sex + "&" + race] if intersectional else [sex, race]
    for groups in partitions:
        means = _group_means(p, groups)
        assert "unseen" in " ".join(means.index)
        assert means.max() - means.min() <= 0.02 + 1e-7, means


def test_cross_validation_with_a_group_missing_from_a_training_fold():
    """A rare group whose rows all fall in one test fold: its training fold has not seen it.
    The default raises the documented error; handle_unknown='new_group' scores every fold."""
    from sklearn.model_selection import KFold, cross_validate

    from skfair import FairNeuralClassifier
    from skfair.metrics import demographic_parity_scorer

    X, y = _groups_frame(450)
    X.loc[440:, "race"] = "rare"  # ten rows, all in the last of three folds
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST)
    with pytest.raises(ValueError, match=r"'race' has values not seen in fit: \['rare'\]"):
        cross_validate(clf, X, y, cv=KFold(3), error_score="raise")
    scoring = {"accuracy": "accuracy", "log_loss": "neg_log_loss",
               "dp": demographic_parity_scorer}
    with pytest.warns(UserWarning, match=r"'race': \['rare'\]"):
        scores = cross_validate(clf.set_params(handle_unknown="new_group"), X, y, cv=KFold(3),
                                scoring=scoring, error_score="raise")
    assert np.isfinite(scores["test_accuracy"]).all()
    assert np.isfinite(scores["test_log_loss"]).all()
    # each test fold (150 rows, at least b_tau) is projected exactly, the rare group included
    assert (-scores["test_dp"] <= clf.epsilon + 1e-9).all()


def test_a_stream_keys_every_unseen_value_as_the_same_group():
    """Unseen values arriving in different batches ('X', then 'Y') are one group of the
    stream: its pooled statistics count them together and the guarantee holds."""
    import warnings

    from skfair import FairNeuralRegressor

    X, y = _groups_frame()
    reg = FairNeuralRegressor(protected_attributes=["sex"], handle_unknown="new_group",
                              epsilon=0.05, **FAST).fit(X.drop(columns="race"), y)
    stream, _ = _groups_frame(120, seed=2)
    stream = stream.drop(columns="race")
    stream.loc[::5, "sex"] = np.where(np.arange(24) < 12, "X", "Y")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for start in range(0, 120, 4):
            reg.partial_predict(stream.iloc[start:start + 4])
    counts = {codes: count for codes, (_, count) in reg.stream_.atom_sums.items()}
    assert counts[(2,)] == 24 and counts[(0,)] + counts[(1,)] == 96
    stats = reg.stream_stats()
    assert set(stats["per_attribute_gaps"]) == {0}
    assert stats["weighted_avg_fairness_gap"] <= reg.epsilon + stats["bound"] + 1e-9


def test_unseen_values_in_row_by_row_inference_and_partial_fit():
    """inference='individual' needs an offset for the unseen group from a calibration set
    that holds it (the error names it); partial_fit raises on unseen values whatever
    handle_unknown says."""
    from skfair import FairNeuralClassifier

    X, y = _groups_frame()
    clf = FairNeuralClassifier(protected_attributes=["sex"], inference="individual",
                               handle_unknown="new_group", **FAST).fit(X.drop(columns="race"), y)
    new = X.drop(columns="race").iloc[:200].assign(sex=["F", "M", "X", "M"] * 50)
    with pytest.warns(UserWarning, match="not seen in fit"):
        with pytest.raises(ValueError, match=r"sex=<unseen> was not in the calibration data"):
            clf.predict(new)
    with pytest.warns(UserWarning, match="not seen in fit"):
        clf.calibrate(new)
        one = clf.predict_proba(new.iloc[2:3])
    with pytest.warns(UserWarning, match="not seen in fit"):
        np.testing.assert_array_equal(one, clf.predict_proba(new.iloc[:4])[2:3])
    with pytest.raises(ValueError, match=r"'sex' has values not seen in fit: \['X'\]"):
        clf.partial_fit(new, y.iloc[:200])


# ------------------------------------------------------------------------------------------------
# X that is not a dense two-dimensional container
@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
@pytest.mark.parametrize("protected", [None, ["sex"]])
@pytest.mark.parametrize("method", ["fit", "predict", "predict_proba", "partial_predict"])
def test_one_dimensional_and_sparse_X_raise_saying_what_to_do(protected, method):
    import scipy.sparse as sp

    from skfair import FairNeuralClassifier

    X, y = _groups_frame(200)
    X = X.drop(columns="race").assign(sex=(X["sex"] == "M").astype(float))
    array = X.to_numpy()
    clf = FairNeuralClassifier(protected_attributes=protected, **FAST)
    if method != "fit":
        clf.fit(X, y)
    state = dict(clf.__dict__)
    call = (lambda Z: clf.fit(Z, y)) if method == "fit" else getattr(clf, method)
    for one_dimensional in (array[:, 0], array[0], X["x"], X.iloc[0]):
        with pytest.raises(ValueError, match=r"(?s)Expected (a )?2(D|-dimensional).*"
                                             r"(Reshape your data|Pass a DataFrame)"):
            call(one_dimensional)
    with pytest.raises(ValueError, match="(2D X.*got 3 dimension|dim 3)"):
        call(np.zeros((3, 2, 2)))
    fix = r"\.toarray\(\)" if protected is None else r"X\.toarray\(\), or pass a pandas DataFrame"
    with pytest.raises(TypeError, match=fix):
        call(sp.csr_matrix(array))
    assert clf.__dict__.keys() == state.keys()  # nothing fitted, no stream started


@pytest.mark.parametrize("protected", [[0], [6], [2, 5], [1, 2], [0, 3, 6]])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_numeric_arrays_keep_every_other_column_in_order(protected, dtype):
    """The columns that are not protected, copied run by run of adjacent columns, are exactly
    np.delete's, as float64, followed by the protected attributes' encoding."""
    from skfair._validation import InputSplitter

    rng = np.random.default_rng(0)
    X = rng.integers(-50, 50, (300, 7)).astype(dtype)
    X[:, protected] = rng.integers(0, 3, (300, len(protected)))
    splitter = InputSplitter(protected)
    fitted, _ = splitter.fit_transform(X, None, 7)
    features, codes = splitter.transform(X)
    n_rest = 7 - len(protected)
    np.testing.assert_array_equal(features[:, :n_rest],
                                  np.delete(X, protected, axis=1).astype(np.float64))
    np.testing.assert_array_equal(features[:, n_rest:], splitter.one_hot(codes))
    np.testing.assert_array_equal(features, fitted)
    assert features.dtype == np.float64 and features.flags.c_contiguous


# ------------------------------------------------------------------------------------------------
# The split of X: pandas' blocks and numpy arrays against a round trip through Python objects
def _through_objects(splitter, X, handle_unknown="error"):
    """The features and codes of X converted through one object array, column by column."""
    values = X.to_numpy(dtype=object) if isinstance(X, pd.DataFrame) else np.asarray(
        X, dtype=object)
    rest = np.delete(values, splitter.indices, axis=1)
    rest[pd.isna(rest)] = np.nan
    codes = splitter.encoder.transform(values[:, splitter.indices], handle_unknown)
    return np.hstack([rest.astype(np.float64), splitter.one_hot(codes)]), codes.numpy()


def _dtypes_frame(n, seed=0):
    """Features of many dtypes, the protected columns among them, in several pandas blocks."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    race = rng.choice(["a", "b", "c"], n)
    frame = pd.DataFrame({
        "x": rng.normal(size=n),
        "sex": pd.Categorical(sex),
        "count": rng.integers(-5, 5, n),
        "small": rng.normal(size=n).astype(np.float32),
        "byte": rng.integers(0, 9, n).astype(np.uint8),
        "flag": rng.integers(0, 2, n).astype(bool),
        "race": pd.array(race, dtype="str"),
        "nullable": pd.array(rng.integers(0, 9, n), dtype="Int64"),
        "ratio": pd.array(rng.normal(size=n), dtype="Float64"),
        "yes": pd.array(rng.integers(0, 2, n).astype(bool), dtype="boolean"),
        "numbers": np.array(rng.normal(size=n), dtype=object),
        "level": pd.Categorical(rng.choice([0.5, 1.5], n)),
        "y": rng.normal(size=n),
    })
    frame["added"] = rng.normal(size=n)  # a block of its own
    return frame


@pytest.mark.parametrize("blocks", [True, False])
@pytest.mark.parametrize("n", [1, 5, 200])
def test_frames_of_every_dtype_split_as_through_python_objects(n, blocks, monkeypatch):
    """Features (bit for bit) and codes from pandas' blocks are those of the object round trip,
    for one row, a few, and more than LOOKUP_ROWS (the codes from distinct values), whatever
    the dtypes, the protected columns' place and the frame's blocks; and so are those of the
    public path taken where a pandas version holds no blocks."""
    from skfair import _validation
    from skfair._validation import LOOKUP_ROWS, InputSplitter

    if not blocks:
        monkeypatch.setattr(_validation, "_frame_layout", lambda X: (None, None))

    frame = _dtypes_frame(300)
    splitter = InputSplitter(["sex", "race"]).fit(frame, np.array(frame.columns), frame.shape[1])
    assert 5 < LOOKUP_ROWS < 200
    X = _dtypes_frame(n, seed=1)
    shuffled = X[list(reversed(X.columns))]  # other blocks, the same columns in another order
    reordered = InputSplitter(["sex", "race"]).fit(frame[shuffled.columns],
                                                   np.array(shuffled.columns), X.shape[1])
    for split, Z in ((splitter, X), (reordered, shuffled), (splitter, X), (splitter, X.copy())):
        features, codes = split.transform(Z)
        expected_features, expected_codes = _through_objects(split, Z)
        np.testing.assert_array_equal(features, expected_features)
        np.testing.assert_array_equal(codes.numpy(), expected_codes)
        assert features.dtype == np.float64 and features.flags.c_contiguous
    many, _ = splitter.transform(pd.concat([X] * 3, ignore_index=True))
    np.testing.assert_array_equal(many, np.vstack([splitter.transform(X)[0]] * 3))


@pytest.mark.parametrize("n", [1, 5, 200])
@pytest.mark.parametrize("dtype", ["category", "str", "object", "Int64", "float64"])
def test_protected_columns_of_every_dtype_code_as_python_objects(n, dtype):
    """Codes of a protected column as a categorical (categories in another order than fit's,
    and unused ones), an arrow string, objects, a nullable integer or numbers, of 1 to 200 rows,
    as their values give them: unseen values raise the same error, or (new_group) take the same
    code with the same warning, and missing values raise."""
    from skfair._validation import InputSplitter

    rng = np.random.default_rng(0)
    numeric = dtype in ("Int64", "float64")
    known = [0, 1, 2] if numeric else ["a", "b", "c"]
    fit_frame = pd.DataFrame({"x": rng.normal(size=60), "g": np.array(known * 20, dtype=object)})
    splitter = InputSplitter(["g"]).fit(fit_frame, np.array(fit_frame.columns), 2)

    def frame(values):
        values = list(values)
        if dtype == "category":  # categories in reverse order, one of them never used
            categories = sorted({v for v in values if v is not None} | {"zz"}, reverse=True)
            column = pd.Categorical(values, categories=categories)
        else:
            column = pd.array(values, dtype=dtype) if dtype != "object" else np.array(
                values, dtype=object)
        return pd.DataFrame({"x": np.arange(float(len(values))), "g": column})

    X = frame(rng.choice(known, n))
    features, codes = splitter.transform(X)
    np.testing.assert_array_equal(codes.numpy()[:, 0], [known.index(v) for v in X["g"]])
    np.testing.assert_array_equal(features, _through_objects(splitter, X)[0])

    unseen = (7 if dtype != "float64" else 7.5) if numeric else "d"
    values = list(X["g"])
    values[n // 2] = unseen
    Z = frame(values)
    with pytest.raises(ValueError) as raised:
        splitter.transform(Z)
    with pytest.raises(ValueError) as expected:
        _through_objects(splitter, Z)
    assert str(raised.value) == str(expected.value)
    assert f"values not seen in fit: [{unseen!r}]" in str(raised.value)
    with pytest.warns(UserWarning) as record:
        features, codes = splitter.transform(Z, "new_group")
    with pytest.warns(UserWarning) as expected_record:
        expected_features, expected_codes = _through_objects(splitter, Z, "new_group")
    assert [str(w.message) for w in record] == [str(w.message) for w in expected_record]
    np.testing.assert_array_equal(codes.numpy(), expected_codes)
    np.testing.assert_array_equal(features, expected_features)
    assert codes[n // 2, 0] == 3

    values[n // 2] = None
    with pytest.raises(ValueError, match="'g' contains missing values"):
        splitter.transform(frame(values), "new_group")


@pytest.mark.parametrize("n", [1, 200])
def test_numeric_arrays_code_protected_columns_as_python_objects(n):
    """A numeric array's protected columns (floats, integers) code as their Python values do,
    on a few rows and from distinct values on many; unseen and missing ones raise the same."""
    from skfair._validation import InputSplitter

    rng = np.random.default_rng(0)
    X = np.c_[rng.normal(size=(300, 2)), rng.integers(0, 3, 300), rng.integers(0, 2, 300)]
    splitter = InputSplitter([2, 3]).fit(X, None, 4)
    for Z in (X[:n], X[:n].astype(np.float32), np.round(X[:n]).astype(np.int64)):
        features, codes = splitter.transform(Z)
        expected_features, expected_codes = _through_objects(splitter, Z)
        np.testing.assert_array_equal(features, expected_features)
        np.testing.assert_array_equal(codes.numpy(), expected_codes)
    Z = X[:n].copy()
    Z[-1, 2] = 5.0
    with pytest.raises(ValueError, match=r"'2' has values not seen in fit: \[5\.0\]"):
        splitter.transform(Z)
    Z[-1, 2] = np.nan
    with pytest.raises(ValueError, match="'2' contains missing values"):
        splitter.transform(Z)


def test_a_stream_of_rows_splits_as_the_frame_and_checks_its_columns():
    """One-row frames cut from a frame (a stream) give its rows' features and codes; a frame
    whose columns differ from fit's is still refused after frames whose columns were known."""
    from skfair import FairNeuralClassifier

    X = _dtypes_frame(200)
    y = (X["x"] > 0).astype(int)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], max_epochs=1,
                               random_state=0).fit(X, y)
    features, codes = clf._validate_X(X, reset=False)
    for i in (0, 7, 199):
        row_features, row_codes = clf._validate_X(X.iloc[[i]], reset=False)
        np.testing.assert_array_equal(row_features, features[i:i + 1])
        np.testing.assert_array_equal(row_codes, codes[i:i + 1])
    with pytest.raises(ValueError, match="feature names should match"):
        clf._validate_X(X.iloc[[0]].rename(columns={"x": "z"}), reset=False)
    with pytest.raises(ValueError, match="feature names should match"):
        clf._validate_X(X.iloc[[0], ::-1], reset=False)


def test_arrays_of_another_width_or_after_a_frame_meet_sklearns_checks():
    """The direct check of an array's columns lets sklearn's own messages through: an array
    of another width raises, an array after a frame warns that it has no feature names."""
    from skfair import FairNeuralClassifier

    X, y = _groups_frame(200)
    X = X.drop(columns="race").assign(sex=(X["sex"] == "M").astype(float))
    on_array = FairNeuralClassifier(protected_attributes=[1], **FAST).fit(X.to_numpy(), y)
    on_array.predict_proba(X.to_numpy()[:1])
    with pytest.raises(ValueError, match="X has 3 features, but .* is expecting 2"):
        on_array.predict_proba(np.c_[X.to_numpy()[:1], [[0.0]]])
    on_frame = FairNeuralClassifier(protected_attributes=["sex"], **FAST).fit(X, y)
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        on_frame.predict_proba(X.to_numpy()[:1])


def test_network_outputs_whose_check_overflows_are_counted_not_refused(monkeypatch):
    """Finite outputs so large that the one-operation check overflows are counted one by one
    and pass; non-finite ones among them raise with their number."""
    import torch

    from skfair import FairNeuralRegressor

    X, y = _groups_frame(100)
    reg = FairNeuralRegressor(protected_attributes=["sex", "race"], **FAST).fit(X, y)
    with torch.no_grad():  # every raw output 1.0
        reg.module_[-1].weight.zero_()
        reg.module_[-1].bias.fill_(1.0)
    features, _ = reg._validate_X(X, reset=False)
    monkeypatch.setattr(reg, "_output", lambda raw: raw * 1e307)
    np.testing.assert_array_equal(reg._network_outputs(features), np.full(100, 1e307))

    def some_infinite(raw):
        out = raw * 1e307
        out[:3] = np.inf
        return out
    monkeypatch.setattr(reg, "_output", some_infinite)
    with pytest.raises(ValueError, match="NaN or infinite for 3 of the 100 rows"):
        reg._network_outputs(features)

