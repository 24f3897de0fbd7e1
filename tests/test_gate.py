"""The release gate: one test per (model, distortion, level) in thresholds.yaml.

Parametrised by the robustness pytest plugin; ``pytest -m blur`` runs only the blur levels.
"""

from robustness.gate import check_threshold


def test_accuracy(robustness_threshold, robustness_result):
    check_threshold(robustness_threshold, robustness_result)
