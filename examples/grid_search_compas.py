"""Model selection: GridSearchCV over epsilon with a fairness scorer and the fair refit rule.

COMPAS two-year recidivism (bundled), protected: sex and race. A ColumnTransformer one-hot encodes
the categorical features and passes the protected columns through; the search keeps, among the
candidates whose cross-validated demographic parity gap is at most 0.05, the most accurate one.
"""

from sklearn.compose import ColumnTransformer
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skfair import FairNeuralClassifier
from skfair.datasets import load_compas
from skfair.metrics import demographic_parity_scorer, fair_refit, fairness_report

data = load_compas()
X_train, X_test, y_train, y_test = train_test_split(
    data.data, data.target, test_size=0.3, stratify=data.target, random_state=0)

prep = ColumnTransformer(
    [("num", StandardScaler(), ["age", "juv_fel_count", "juv_misd_count", "juv_other_count",
                                "priors_count"]),
     ("cat", OneHotEncoder(sparse_output=False), ["age_cat", "c_charge_degree"])],
    remainder="passthrough",  # sex and race arrive as remainder__sex, remainder__race
).set_output(transform="pandas")
model = make_pipeline(prep, FairNeuralClassifier(protected_attributes=["sex", "race"],
                                                 max_epochs=10, random_state=0))

search = GridSearchCV(
    model,
    {"fairneuralclassifier__epsilon": [0.01, 0.05, 0.1, 0.3]},
    scoring={"accuracy": "accuracy", "dp": demographic_parity_scorer},
    refit=fair_refit(0.05, score="accuracy", gap="dp"),
    cv=3,
)
search.fit(X_train, y_train)

for params, acc, dp in zip(search.cv_results_["params"], search.cv_results_["mean_test_accuracy"],
                           search.cv_results_["mean_test_dp"]):
    print(f"epsilon={params['fairneuralclassifier__epsilon']:<5} accuracy={acc:.3f} "
          f"DP gap={-dp:.3f}")  # fairness scorers return the negative gap
print("chosen:", search.best_params_)
print(f"test accuracy: {search.best_estimator_.score(X_test, y_test):.3f}")
print(fairness_report(search.best_estimator_, X_test, y_test).round(3))
