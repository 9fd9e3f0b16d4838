"""Shared fixtures of the Python package tests (run by tests/python/run.sh in a fresh venv)."""

import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CT = os.path.join(ROOT, "tests", "data", "ct-liver")


def cli():
    return os.environ["DSPNET_CLI"]


@pytest.fixture(scope="session")
def weights():
    """Synthetic ResNet-50 weights: the mechanics, fast; not anatomy."""
    return os.environ["DSPNET_TEST_WEIGHTS"]


@pytest.fixture(scope="session")
def ct():
    """The CT liver crop (nibabel images) and a support painted on slice k=64."""
    import nibabel as nib

    img = nib.load(os.path.join(CT, "image.nii.gz"))
    truth = np.asarray(nib.load(os.path.join(CT, "labels.nii.gz")).dataobj).astype(np.uint16)
    support = np.zeros_like(truth)
    support[:, :, 64] = truth[:, :, 64]
    return img, support


def write_support(path, img, support):
    import nibabel as nib

    nib.save(nib.Nifti1Image(support, img.affine), path)


def run_cli(*args):
    p = subprocess.run([cli(), *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p
