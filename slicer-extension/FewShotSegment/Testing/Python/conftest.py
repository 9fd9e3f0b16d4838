"""Fixtures for the CI tests that run the extension's logic on real MRML under PyPI's slicer-core.

Environment (set by tests/slicer/run.sh): DSPNET_LIBRARY (libdspnet), DSPNET_CLI (the dspnet tool),
optionally DSPNET_TEST_WEIGHTS (else synthetic ResNet-50 weights are generated) and
FEWSHOT_TEST_WORKDIR (else a pytest temporary folder)."""

import os
import sys

import pytest

MODULE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

from FewShotSegmentLib import testing  # noqa: E402


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    path = os.environ.get("FEWSHOT_TEST_WORKDIR")
    if path:
        os.makedirs(path, exist_ok=True)
        return path
    return str(tmp_path_factory.mktemp("fewshot"))


@pytest.fixture(scope="session")
def prerequisites():
    missing = testing.missingPrerequisites()
    if missing:
        pytest.fail("cannot run the Slicer extension tests: " + missing, pytrace=False)


@pytest.fixture(scope="session")
def weights(prerequisites, workdir):
    return testing.syntheticWeights(workdir)


@pytest.fixture(scope="session")
def ct(weights, workdir):
    """The CT scenario, run once: logic and dspnet segment agree (asserted inside)."""
    return testing.runCtAxialScenario(testing.newScene(), workdir, weights)


@pytest.fixture(scope="session")
def mri(weights, workdir):
    return testing.runMriSagittalScenario(testing.newScene(), workdir, weights)
