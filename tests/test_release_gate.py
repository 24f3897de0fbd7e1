"""The release gate: one test per (model, distortion, level) in thresholds.yaml.

Parametrised by the robustness pytest plugin; ``pytest -m blur`` runs only the blur levels,
``pytest -m "jpeg or jpeg2000"`` both compression families. A failing case names the measured
accuracy, its 95% Wilson interval, n, the threshold and the line of thresholds.yaml that set it.
"""


def test_accuracy(robustness_verdict):
    robustness_verdict.check()
