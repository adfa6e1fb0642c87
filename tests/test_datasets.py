"""Bundled datasets load offline with the documented shapes, types and protected columns."""

import socket

import numpy as np
import pandas as pd
import pytest

from skfair.datasets import load_adult, load_compas, load_german_credit, load_law_school

CASES = [
    (load_adult, (48842, 13), "income", ["sex", "race"], {"<=50K", ">50K"}),
    (load_compas, (6172, 9), "two_year_recid", ["sex", "race"], {0, 1}),
    (load_german_credit, (1000, 10), "credit_risk", ["sex", "age_group"], {"bad", "good"}),
    (load_law_school, (21791, 5), "ZFYA", ["race", "sex"], None),
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset loader tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("loader, shape, target, protected, labels", CASES)
def test_loader(loader, shape, target, protected, labels):
    bunch = loader()
    assert bunch.data.shape == shape and len(bunch.target) == shape[0]
    assert bunch.target.name == target and bunch.protected == protected
    assert bunch.frame.shape == (shape[0], shape[1] + 1)
    assert bunch.feature_names == list(bunch.data.columns)
    for column in protected:
        values = bunch.data[column]
        assert values.dtype.name == "category" and values.nunique() >= 2
        assert not values.isna().any()
    if labels is None:
        assert bunch.target.dtype == np.float64 and "target_names" not in bunch
    else:
        assert set(bunch.target.unique()) == labels
        assert list(bunch.target_names) == sorted(labels)
    assert not bunch.data.isna().any().any()
    assert "Source" in bunch.DESCR and "License" in bunch.DESCR
    assert f"{shape[0]:,}" in bunch.DESCR
    numeric = bunch.data.select_dtypes("number")
    categorical = bunch.data.select_dtypes("category")
    assert numeric.shape[1] + categorical.shape[1] == shape[1]


@pytest.mark.parametrize("loader, shape, target, protected, labels", CASES)
def test_return_X_y_and_arrays(loader, shape, target, protected, labels):
    X, y = loader(return_X_y=True)
    assert isinstance(X, pd.DataFrame) and X.shape == shape
    X, y = loader(as_frame=False, return_X_y=True)
    assert isinstance(X, np.ndarray) and X.dtype == object and X.shape == shape
    assert isinstance(y, np.ndarray) and y.shape == (shape[0],)


def test_documented_details():
    adult = load_adult()
    assert (adult.data["workclass"] == "Unknown").sum() == 2799
    assert adult.target.value_counts().to_dict() == {"<=50K": 37155, ">50K": 11687}
    german = load_german_credit()
    young = german.data["age"] <= 25
    assert (german.data.loc[young, "age_group"] == "young").all()
    assert set(load_law_school().data["sex"]) == {"Female", "Male"}
    assert load_compas().data["race"].nunique() == 6
