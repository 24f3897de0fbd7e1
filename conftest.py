"""Repository conftest.

The robustness pytest plugin (fixtures, options, markers, the thresholds.yaml parametrisation) is
installed with the package through the ``pytest11`` entry point, so nothing needs importing here.
This is the place to override its fixtures for your own model, dataset or thresholds file; see the
README's "Gate your own model" section, e.g.::

    @pytest.fixture(scope="session")
    def robustness_model(...): ...
"""

# Benchmarks and helper scripts are run on purpose, never collected as tests.
collect_ignore = ["benchmarks", "scripts", "docs"]
