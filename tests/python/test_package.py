"""The dspnet Python package as pip installed it: numpy in [i, j, k], the same labels as `dspnet segment`,
geometry kept by the SimpleITK and nibabel helpers, errors, progress, cancel, the GIL, sessions."""

import os
import re
import threading

import numpy as np
import pytest

import dspnet
from conftest import CT, ROOT, run_cli, write_support

EXTENT = "62:66"


@pytest.fixture(scope="module")
def model(weights):
    with dspnet.Model(weights, device="cpu") as m:
        yield m


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ct, weights):
    """`dspnet segment` on the same files: the labels every Python path must reproduce."""
    import nibabel as nib

    img, support = ct
    d = tmp_path_factory.mktemp("ref")
    sup = d / "support.nii.gz"
    write_support(sup, img, support)
    out = d / "cli.nii.gz"
    run_cli(
        "segment",
        os.path.join(CT, "image.nii.gz"),
        "--support",
        sup,
        "-o",
        out,
        "--weights",
        weights,
        "--device",
        "cpu",
        "--extent",
        EXTENT,
        "--quiet",
    )
    return sup, np.asarray(nib.load(out).dataobj)


def test_installed_package_carries_library_and_default_model():
    assert "DSPNET_LIBRARY" not in os.environ
    lib = dspnet.load_library()
    pkg = os.path.dirname(dspnet.__file__)
    assert lib.path == os.path.join(pkg, "lib", "libdspnet.so"), "the wheel's own library"
    assert "site-packages" in pkg, "tests run against the installed package, not the source tree"
    assert os.path.isfile(os.path.join(pkg, "lib", "weights", "dspnet-default.safetensors"))
    cargo_version = re.search(r'^version = "([^"]+)"', open(os.path.join(ROOT, "Cargo.toml")).read(), re.M).group(1)
    assert dspnet.__version__ == cargo_version == dspnet.library_version()[0]
    with dspnet.Model() as m:  # the default model, found next to the library
        assert m.device == "cpu"


def test_numpy_ijk_matches_the_command_line_in_any_order_and_dtype(model, ct, reference):
    img, support = ct
    _, expected = reference
    data = np.asarray(img.dataobj)  # int16, [i, j, k], Fortran-ordered as nibabel maps it
    spacing = img.header.get_zooms()[:3]
    labels = model.segment(data, support, spacing=spacing, extent=EXTENT)
    assert labels.shape == data.shape and labels.dtype == np.uint16
    assert np.array_equal(labels, expected)
    # C order, float64, bool-free copies: the same labels.
    assert np.array_equal(
        model.segment(
            np.ascontiguousarray(data, dtype=np.float64), np.ascontiguousarray(support), spacing=spacing, extent=EXTENT
        ),
        expected,
    )
    # [k, j, i] arrays with index_order="kji" (SimpleITK, Slicer).
    kji = model.segment(data.T, support.T, spacing=spacing, extent=EXTENT, index_order="kji")
    assert np.array_equal(kji.T, expected)
    labels, summary = model.segment(data, support, spacing=spacing, extent=EXTENT, return_summary=True)
    assert summary.slice_axis == 2 and summary.labelled_voxels == int(np.count_nonzero(expected))
    assert summary.slice_confidence.shape == (data.shape[2],)


def test_options_are_the_command_lines(model, ct, weights, tmp_path):
    img, support = ct
    import nibabel as nib

    data, spacing = np.asarray(img.dataobj), img.header.get_zooms()[:3]
    sup = tmp_path / "s.nii.gz"
    write_support(sup, img, support)
    out = tmp_path / "independent.nii.gz"
    run_cli(
        "segment",
        os.path.join(CT, "image.nii.gz"),
        "--support",
        sup,
        "-o",
        out,
        "--weights",
        weights,
        "--device",
        "cpu",
        "--extent",
        EXTENT,
        "--propagation",
        "independent",
        "--axis",
        "k",
        "--quiet",
    )
    labels = model.segment(data, support, spacing=spacing, extent=EXTENT, propagation="independent", axis="k")
    assert np.array_equal(labels, np.asarray(nib.load(out).dataobj))
    with pytest.raises(dspnet.InvalidArgumentError) as e:
        model.segment(data, support, spacing=spacing, propagation="sideways")
    assert e.value.status == dspnet.binding.DSPNET_ERROR_INVALID_ARGUMENT
    # Head parameters under the official names, as --head gives them.
    out = tmp_path / "head.nii.gz"
    run_cli(
        "segment",
        os.path.join(CT, "image.nii.gz"),
        "--support",
        sup,
        "-o",
        out,
        "--weights",
        weights,
        "--device",
        "cpu",
        "--extent",
        EXTENT,
        "--head",
        "bg_thresh=0.5",
        "--head",
        "w1_w2_w3=0:1:0",
        "--quiet",
    )
    head = {"bg_thresh": 0.5, "w1_w2_w3": (0, 1, 0)}
    tuned = model.segment(data, support, spacing=spacing, extent=EXTENT, head=head)
    assert np.array_equal(tuned, np.asarray(nib.load(out).dataobj))
    assert dspnet.HEAD_KEYS[0] == "max_num_sp" and len(dspnet.HEAD_KEYS) == 9
    with pytest.raises(dspnet.InvalidArgumentError, match="head.val_wsize"):
        model.segment(data, support, spacing=spacing, head={"val_wsize": 3})
    with pytest.raises(dspnet.InvalidArgumentError, match="unknown head option.*max_seeds"):
        model.segment(data, support, spacing=spacing, head={"max_seeds": 3})


def test_helpers_keep_geometry(model, ct, reference):
    import nibabel as nib
    import SimpleITK as sitk

    img, support = ct
    sup_path, expected = reference
    out = dspnet.segment_nibabel(model, img, nib.load(sup_path), extent=EXTENT)
    assert isinstance(out, nib.Nifti1Image) and np.allclose(out.affine, img.affine)
    assert out.get_data_dtype() == np.uint16 and np.array_equal(np.asarray(out.dataobj), expected)

    simg = sitk.ReadImage(os.path.join(CT, "image.nii.gz"))
    ssup = sitk.ReadImage(str(sup_path))
    sout = dspnet.segment_sitk(model, simg, ssup, extent=EXTENT)
    assert sout.GetSize() == simg.GetSize() and sout.GetOrigin() == simg.GetOrigin()
    assert sout.GetSpacing() == simg.GetSpacing() and sout.GetDirection() == simg.GetDirection()
    assert np.array_equal(sitk.GetArrayFromImage(sout).T, expected)  # GetArray is [k, j, i]
    shifted = sitk.Image(ssup)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(dspnet.InvalidArgumentError, match="origin"):
        dspnet.segment_sitk(model, simg, shifted)


def test_segment_files_is_the_command_line(model, ct, reference, tmp_path):
    import nibabel as nib

    sup_path, expected = reference
    out = tmp_path / "deep" / "out.nii.gz"
    summary = model.segment_files(os.path.join(CT, "image.nii.gz"), sup_path, out, extent=EXTENT)
    assert np.array_equal(np.asarray(nib.load(out).dataobj), expected)
    assert summary.labelled_voxels == int(np.count_nonzero(expected))
    with pytest.raises(dspnet.DspnetIOError, match="missing"):
        model.segment_files(tmp_path / "missing.nii.gz", sup_path, tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


def test_errors_carry_the_status(model, ct):
    img, support = ct
    data, spacing = np.asarray(img.dataobj), img.header.get_zooms()[:3]
    with pytest.raises(dspnet.NoSupportError) as e:
        model.segment(data, np.zeros_like(support), spacing=spacing)
    assert e.value.status_name == "DSPNET_ERROR_NO_SUPPORT"
    with pytest.raises(dspnet.ShapeError):
        model.segment(data, support[:, :, :-1], spacing=spacing)
    bad = data.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(dspnet.NonFiniteError):
        model.segment(bad, support, spacing=spacing)
    with pytest.raises(dspnet.InvalidArgumentError, match="spacing"):
        model.segment(data, support, spacing=(1, 0, 1))
    with pytest.raises(dspnet.ModelFormatError):
        dspnet.Model(os.path.join(CT, "labels.nii.gz"))


def test_progress_cancel_and_the_gil(model, ct):
    img, support = ct
    data, spacing = np.asarray(img.dataobj), img.header.get_zooms()[:3]
    calls, ticks, stop = [], [0], threading.Event()

    def spin():  # runs only while segment() has released the GIL
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        model.segment(data, support, spacing=spacing, extent=EXTENT, progress=lambda d, n: calls.append((d, n)))
    finally:
        stop.set()
        t.join()
    assert calls and calls[-1][0] == calls[-1][1] and ticks[0] > 1000
    cancel = threading.Event()

    def progress(done, total):
        if done >= 1:
            cancel.set()

    with pytest.raises(dspnet.CancelledError):
        model.segment(data, support, spacing=spacing, extent="all", progress=progress, cancel=cancel)


def test_session_gives_the_same_labels(model, ct, reference):
    img, support = ct
    _, expected = reference
    data, spacing = np.asarray(img.dataobj), img.header.get_zooms()[:3]
    with model.session(data, spacing) as session:
        labels, summary = session.segment(support, extent=EXTENT)
        assert np.array_equal(labels, expected)
        again, _ = session.segment(support, extent=EXTENT)
        assert np.array_equal(again, expected) and session.info()["slices_reused"] > 0
