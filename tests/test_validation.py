"""Finding protected columns and encoding their groups."""

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


def test_large_and_small_frames_split_into_the_same_features_and_groups():
    """Frames above SMALL_FRAME rows go to float64 column block by column block; smaller ones
    through one object array: both give the same network inputs and group codes."""
    from skfair import FairNeuralClassifier
    from skfair._validation import SMALL_FRAME

    X = _mixed_frame(200)
    y = (X["x"] > 0).astype(int)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], max_epochs=1,
                               random_state=0).fit(X, y)
    features, codes = clf._validate_X(X, reset=False)
    assert len(X) > SMALL_FRAME
    for start in range(0, 200, SMALL_FRAME):
        part = X.iloc[start:start + SMALL_FRAME]
        small_features, small_codes = clf._validate_X(part, reset=False)
        np.testing.assert_array_equal(small_features, features[start:start + SMALL_FRAME])
        np.testing.assert_array_equal(small_codes, codes[start:start + SMALL_FRAME])
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
def test_both_frame_paths_raise_the_same_errors(n, column, value, match):
    from skfair import FairNeuralClassifier

    X = _mixed_frame(200)
    y = (X["x"] > 0).astype(int)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], max_epochs=1,
                               random_state=0).fit(X, y)
    bad = X.iloc[:n].copy()
    bad[column] = bad[column].astype("Int64" if value is pd.NA else object)
    bad.iloc[n // 2, bad.columns.get_loc(column)] = value
    with pytest.raises(ValueError, match=match):
        clf.predict_proba(bad)


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
