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
