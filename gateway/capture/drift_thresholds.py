"""The drift statistics' thresholds and defaults, in one place, each with where it comes from.

Constants only, so the command line can show them in ``--help`` without importing numpy or scipy.
The sources are cited in docs/architecture.md ("Drift").
"""

from __future__ import annotations

REFERENCE_FILE = "reference.parquet"  # a version's training sample, beside its model file
DEFAULT_BINS = 10
PSI_EPSILON = 1e-4  # the share an empty bin counts as in PSI (Evidently's fill)
# Thresholds, with their sources in docs/architecture.md ("Drift"):
PSI_WARN = 0.1  # PSI bands, the industry rule of thumb: < 0.1 insignificant, 0.1-0.25 moderate
PSI_DRIFT = 0.25  # > 0.25 major
WASSERSTEIN_DRIFT = 0.1  # Evidently: Wasserstein distance / reference std, numeric features
JS_DRIFT = 0.1  # Evidently: Jensen-Shannon distance, features with few distinct values
STD_FLOOR = 0.001  # Evidently's floor under the reference std
FEW_VALUES = 5  # Evidently: at most this many distinct reference values is treated as categorical
DEFAULT_DRIFT_SHARE = 0.5  # Evidently's drift_share: the dataset drifts when this share of features does
# Samples up to this many rows go to scipy as they are (ks_2samp's exact p-value stops here too);
# larger ones take the sorted-array path.
SCIPY_DIRECT_MAX_ROWS = 10_000
