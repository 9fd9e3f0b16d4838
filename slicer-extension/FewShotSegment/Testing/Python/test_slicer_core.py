"""The Few-Shot Segment extension on real Slicer code (PyPI slicer-core), without Qt.

Run by tests/slicer/run.sh. The scenarios themselves live in FewShotSegmentLib/testing.py and are the
same ones FewShotSegmentTest runs inside 3D Slicer."""

import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from FewShotSegmentLib import binding, testing
from FewShotSegmentLib import logic as fslogic

EXTENSION_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
MODULE_DIR = os.path.join(EXTENSION_DIR, "FewShotSegment")
BATCH = os.path.join(EXTENSION_DIR, "scripts", "batch_segment.py")


def lpsMatrixOf(volumeNode):
    m = testing.ijkToRAS(volumeNode)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ m


def readSegNrrdSegment(path, name):
    """A segment of a .seg.nrrd read with slicerio, as a [k, j, i] 0/1 array, plus the file's geometry."""
    import slicerio

    seg = slicerio.read_segmentation(path)
    names = [s["name"] for s in seg["segments"]]
    assert name in names, f"{name} not in {names}"
    extracted = slicerio.extract_segments(seg, [(name, 1)])
    voxels = extracted["voxels"]  # [i, j, k]
    offset = seg.get("referenceImageExtentOffset") or [0, 0, 0]
    return np.ascontiguousarray(voxels.T), seg["ijkToLPS"], offset, names


# --------------------------------------------------------------------------------------------------
# Packaging and import hygiene
# --------------------------------------------------------------------------------------------------


def test_logic_and_binding_import_without_qt():
    code = (
        "import sys; sys.path.insert(0, %r); import FewShotSegmentLib.logic, dspnet, dspnet.binding; "
        "from FewShotSegmentLib.logic import FewShotSegmentLogic; "
        "bad = [m for m in ('qt', 'ctk', 'PythonQt', 'slicer') if m in sys.modules]; "
        "assert not bad, bad; print('ok')"
    ) % MODULE_DIR
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_slicer_files_compile_and_cmake_lists_existing_files():
    for path in [
        os.path.join(MODULE_DIR, "FewShotSegment.py"),
        os.path.join(MODULE_DIR, "FewShotSegmentLib", "SegmentEditorEffect.py"),
        BATCH,
    ]:
        with open(path) as f:
            compile(f.read(), path, "exec")  # syntax check without writing __pycache__
    cmake = open(os.path.join(MODULE_DIR, "CMakeLists.txt")).read()
    listed = re.findall(r"^\s+((?:FewShotSegmentLib/|Resources/|\$\{MODULE_NAME\})[^\s)]*)\s*$", cmake, re.M)
    assert len(listed) >= 8, listed
    for rel in listed:
        rel = rel.replace("${MODULE_NAME}", "FewShotSegment")
        assert os.path.isfile(os.path.join(MODULE_DIR, rel)), f"CMakeLists.txt lists a missing file: {rel}"
    top = open(os.path.join(EXTENSION_DIR, "CMakeLists.txt")).read()
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
        "add_subdirectory(FewShotSegment)",
        "Slicer_EXTENSION_GENERATE_CONFIG",
        "Slicer_EXTENSION_CPACK",
    ):
        assert key in top, key
    for icon in ("Resources/Icons/FewShotSegment.png", "FewShotSegmentLib/SegmentEditorEffect.png"):
        with open(os.path.join(MODULE_DIR, icon), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", icon


# --------------------------------------------------------------------------------------------------
# Binding
# --------------------------------------------------------------------------------------------------


def test_binding_finds_library_and_checks_abi(prerequisites, monkeypatch, tmp_path):
    lib = binding.load_library()
    assert lib.abi_version == binding.ABI_VERSION == 1
    assert re.match(r"^\d+\.\d+\.\d+", lib.version)
    # DSPNET_LIBRARY may name a folder too.
    monkeypatch.setenv("DSPNET_LIBRARY", os.path.dirname(lib.path))
    assert binding.library_candidates()[0] == os.path.join(os.path.dirname(lib.path), "libdspnet.so")
    # A file that is not libdspnet is reported, not crashed on.
    bogus = tmp_path / "libdspnet.so"
    bogus.write_bytes(b"not a library")
    with pytest.raises(binding.LibraryNotFoundError, match="cannot load libdspnet"):
        binding.load_library(str(bogus))
    # An explicit DSPNET_LIBRARY that is wrong is an error (in a fresh process: the library is cached).
    code = (
        "import sys; sys.path.insert(0, %r); from FewShotSegmentLib import binding; binding.load_library()" % MODULE_DIR
    )
    env = dict(os.environ, DSPNET_LIBRARY=str(tmp_path / "nowhere.so"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "DSPNET_LIBRARY=" in proc.stderr and "no libdspnet there" in proc.stderr


def test_binding_refuses_another_abi_version(tmp_path):
    """A library whose dspnet_abi_version() differs from the binding's ABI is refused with a message."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a fake libdspnet")
    src = tmp_path / "fake.c"
    src.write_text("""
        #include <stddef.h>
        unsigned dspnet_abi_version(void) { return 2; }
        const char *dspnet_version(void) { return "9.0.0"; }
        const char *dspnet_last_error_message(void) { return ""; }
        int dspnet_model_load(const char *w, const char *d, void **m) { return 6; }
        void dspnet_model_free(void *m) {}
        void dspnet_segment_options_init(void *o) {}
        int dspnet_segment(const void *m, const void *i, const void *s, void *o, const void *p) { return 2; }
    """)
    lib = tmp_path / "libdspnet.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    with pytest.raises(binding.LibraryNotFoundError, match="C ABI version 2, this binding needs version 1"):
        binding.load_library(str(lib))


def test_binding_maps_status_codes_to_exceptions(weights, tmp_path):
    with pytest.raises(binding.DspnetIOError) as e:
        binding.Model(str(tmp_path / "missing.safetensors"), device="cpu")
    assert e.value.status == binding.DSPNET_ERROR_IO and e.value.status_name == "DSPNET_ERROR_IO"
    assert "missing.safetensors" in str(e.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(binding.ModelFormatError):
        binding.Model(str(bad), device="cpu")
    with pytest.raises((binding.InvalidArgumentError, binding.BackendUnavailableError)):
        binding.Model(weights, device="quantum")
    model = binding.Model(weights, device="cpu")
    assert model.device == "cpu"
    image = np.zeros((3, 16, 16), np.int16)
    with pytest.raises(binding.NoSupportError, match="no"):
        binding.segment(model, image, np.zeros(image.shape, np.uint16), (1, 1, 1))
    with pytest.raises(binding.ShapeError):
        binding.segment(model, image, np.zeros((3, 16, 15), np.uint16), (1, 1, 1))
    support = np.zeros(image.shape, np.uint16)
    support[1, 4:8, 4:8] = 1
    with pytest.raises(binding.InvalidArgumentError, match="spacing"):
        binding.segment(model, image, support, (1, 0, 1))
    image[0, 0, 0] = 0
    with pytest.raises(binding.NonFiniteError):
        binding.segment(model, np.full(image.shape, np.nan, np.float32), support, (1, 1, 1))
    model.close()
    model.close()  # double close is harmless


def test_binding_default_model_from_environment(weights, monkeypatch):
    monkeypatch.setenv("DSPNET_WEIGHTS", weights)
    with binding.Model(None, device="cpu") as model:
        assert model.device == "cpu"


def test_binding_passes_slicer_arrays_without_copies(prerequisites):
    import slicer

    scene = testing.newScene()
    volume = testing.loadVolume(scene, os.path.join(testing.dataDir(), "ct-liver", "image.nii.gz"))
    kji = slicer.util.arrayFromVolume(volume)
    assert binding._as_image(kji) is kji
    support = np.zeros(kji.shape, np.uint16)
    assert binding._as_u16(support, kji.shape, "support") is support
    # Non-contiguous views and unsupported dtypes are converted, not rejected.
    assert binding._as_image(kji[:, ::2]).flags.c_contiguous
    assert binding._as_image(np.zeros((2, 2, 2), np.int64)).dtype == np.float64
    assert binding._as_image(np.zeros((2, 2, 2), np.float16)).dtype == np.float32


def test_progress_cancel_and_untouched_output(weights):
    model = binding.Model(weights, device="cpu")
    image = np.random.default_rng(0).normal(0, 100, (4, 32, 32)).astype(np.float32)
    support = np.zeros(image.shape, np.uint16)
    support[1, 8:20, 8:20] = 1
    out = np.full(image.shape, 7, np.uint16)
    calls = []
    cancel = threading.Event()

    def progress(done, total):
        calls.append((done, total))
        cancel.set()

    with pytest.raises(binding.CancelledError) as e:
        binding.segment(model, image, support, (1, 1, 1), extent="all", progress=progress, cancel=cancel, out=out)
    assert e.value.status_name == "DSPNET_ERROR_CANCELLED"
    assert calls and calls[0][0] == 0
    assert (out == 7).all(), "a cancelled run must not touch the output"

    def failing(done, total):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        binding.segment(model, image, support, (1, 1, 1), progress=failing)


def test_worker_thread_releases_the_gil(ct, weights):
    """SegmentationTask runs libdspnet on a worker; the calling thread keeps running meanwhile."""
    logic = fslogic.FewShotSegmentLogic()
    fslogic.FewShotSegmentLogic.clearSessions()  # encode again: slices cached by earlier tests make it too quick
    job = logic.prepareJob(ct["volume"], ct["segmentation"], [ct["liverId"]], sliceAxis=2, extent=(0, 5))
    task = fslogic.SegmentationTask(logic, job, weights=weights, device="cpu").start()
    gaps, last = [], time.perf_counter()
    while not task.finished:
        time.sleep(0.01)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        if task.progress[0] >= 1:
            task.cancel()
    assert task.cancelled and task.error is None and job.labels is None
    assert len(gaps) > 20, f"the worker should have run for a while ({len(gaps)} ticks of 10 ms)"
    assert max(gaps) < 0.5, f"the main thread stalled for {max(gaps):.2f} s: the GIL was not released"


# --------------------------------------------------------------------------------------------------
# Slice axis from views
# --------------------------------------------------------------------------------------------------


def test_slice_axis_from_normal():
    identity = np.eye(3)
    assert fslogic.sliceAxisFromNormal((0, 0, 1), identity) == 2
    assert fslogic.sliceAxisFromNormal((-1, 0, 0), identity) == 0
    rotated = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float)  # columns: i, j, k in RAS
    assert fslogic.sliceAxisFromNormal((1, 0, 0), rotated) == 2
    assert fslogic.sliceAxisFromNormal((0, 0, 1), rotated) == 1
    a = np.radians(15)
    with pytest.raises(fslogic.ObliqueViewError, match=r"15\.0 degrees.*Rotate to volume plane"):
        fslogic.sliceAxisFromNormal((np.sin(a), 0, np.cos(a)), identity, viewName="The Red view")


def test_slice_axis_from_slice_nodes_on_rotated_volume(mri):
    import vtk

    scene = mri["scene"]
    volume = mri["volume"]
    assert fslogic.sliceAxisFromSliceNode(testing.sliceNode(scene, "Green", "Coronal"), volume) == 0
    assert fslogic.sliceAxisFromSliceNode(testing.sliceNode(scene, "Red", "Axial"), volume) == 1
    oblique = testing.sliceNode(scene, "Slice4", "Sagittal")
    t = vtk.vtkTransform()
    t.SetMatrix(oblique.GetSliceToRAS())
    t.RotateX(20)
    oblique.GetSliceToRAS().DeepCopy(t.GetMatrix())
    oblique.UpdateMatrices()
    with pytest.raises(fslogic.ObliqueViewError, match="Slice4 view is oblique"):
        fslogic.sliceAxisFromSliceNode(oblique, volume)
    # The logic refuses before running anything.
    with pytest.raises(fslogic.ObliqueViewError):
        fslogic.FewShotSegmentLogic().segment(volume, mri["segmentation"], sliceAxis=oblique)
    # A parent transform of the volume is taken into account: rotate the volume 90 degrees about S.
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 0, 0), m.SetElement(0, 1, -1), m.SetElement(1, 0, 1), m.SetElement(1, 1, 0)
    transform.SetMatrixTransformToParent(m)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    try:
        # World sagittal (normal R) is now the volume's local coronal direction (A) -> axis i.
        assert fslogic.sliceAxisFromSliceNode(testing.sliceNode(scene, "Yellow2", "Sagittal"), volume) == 0
    finally:
        volume.SetAndObserveTransformNodeID(None)


# --------------------------------------------------------------------------------------------------
# Scenarios on the demo volumes: logic == dspnet segment, voxel for voxel
# --------------------------------------------------------------------------------------------------


def test_ct_axial_logic_matches_cli(ct):
    result = ct["result"]
    assert result.segmentNames == ["Liver"]
    assert result.slicesProcessed == 3 and result.seconds > 0
    assert result.voxels[ct["liverId"]] == int(ct["liver"].sum()) > 0


def test_ct_result_seg_nrrd_reads_back_with_slicerio(ct):
    liver, ijkToLPS, offset, names = readSegNrrdSegment(ct["resultPath"], "Liver")
    assert names == ["Liver", "Bystander"]
    assert list(offset) == [0, 0, 0]
    np.testing.assert_allclose(ijkToLPS, lpsMatrixOf(ct["volume"]), atol=1e-9)
    testing.assertSameMask(liver, ct["cli"] == 1, "Liver read back by slicerio vs dspnet segment")
    bystander, _, _, _ = readSegNrrdSegment(ct["resultPath"], "Bystander")
    testing.assertSameMask(bystander, ct["bystander"], "Bystander read back by slicerio")


def test_mri_sagittal_rotated_anisotropic_logic_matches_cli(mri):
    result = mri["result"]
    assert result.segmentNames == ["Putamen_L", "Thalamus_L"]
    assert result.sliceAxis == 2
    # two classes, slices 1 and 3 each (slice 2 is the support)
    assert result.slicesProcessed == 4


def test_mri_result_seg_nrrd_reads_back_with_slicerio(mri):
    expected = lpsMatrixOf(mri["volume"])
    assert not np.allclose(expected[:3, :3] / np.linalg.norm(expected[:3, :3], axis=0), np.diag([-1, -1, 1]))
    for name, array in mri["arrays"].items():
        voxels, ijkToLPS, offset, names = readSegNrrdSegment(mri["resultPath"], name)
        assert names == ["Putamen_L", "Thalamus_L"]
        np.testing.assert_allclose(ijkToLPS, expected, atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(ijkToLPS[:3, :3], axis=0), testing.MRI_SPACING, atol=1e-9)
        testing.assertSameMask(voxels, array, f"{name} read back by slicerio")


def test_plain_numpy_binding_on_pynrrd_arrays_matches_cli(ct, weights):
    """The binding without Slicer: pynrrd's [i, j, k] arrays with index_order='ijk'."""
    import nrrd
    import slicerio

    image, header = nrrd.read(ct["files"]["image"])  # [i, j, k], Fortran order
    spacing = np.linalg.norm(header["space directions"], axis=1)
    support = slicerio.extract_segments(slicerio.read_segmentation(ct["files"]["support"]), [("Liver", 1)])["voxels"]
    with binding.Model(weights, device="cpu") as model:
        labels, summary = binding.segment(
            model, image, support, spacing, slice_axis="k", extent="1:4", index_order="ijk"
        )
    assert labels.shape == image.shape and summary.slices_processed == 3
    testing.assertSameMask(labels.T, ct["cli"] == 1, "binding on pynrrd arrays vs dspnet segment")


def test_binding_propagation_option_matches_cli(ct, weights, workdir):
    """propagation="independent" is the CLI's --propagation independent; unknown values are refused."""
    import nrrd
    import slicerio

    files = ct["files"]
    image, header = nrrd.read(files["image"])
    spacing = np.linalg.norm(header["space directions"], axis=1)
    support = slicerio.extract_segments(slicerio.read_segmentation(files["support"]), [("Liver", 1)])["voxels"]
    out = os.path.join(workdir, "independent.nrrd")
    testing.runCli(files["image"], files["support"], out, weights, "k", (1, 4), propagation="independent")
    cli, _ = nrrd.read(out)
    with binding.Model(weights, device="cpu") as model:
        labels, summary = binding.segment(
            model, image, support, spacing, slice_axis="k", extent="1:4", index_order="ijk", propagation="independent"
        )
        assert summary.slices_processed == 3
        testing.assertSameMask(labels, cli == 1, "binding independent vs dspnet segment --propagation independent")
        with pytest.raises(binding.InvalidArgumentError):
            binding.segment(model, image, support, spacing, slice_axis="k", propagation="sideways", index_order="ijk")


def test_correction_reuses_the_session_and_matches_a_fresh_run(ct, weights):
    """Paint, run, correct one slice, run again: the second run reuses the session's encoded slices and
    gives what a run without a session gives; a changed volume gets a new session."""
    scene = testing.newScene()
    files = ct["files"]
    volume = testing.loadVolume(scene, files["image"], name="ct-session")
    seg = testing.loadSegmentation(scene, files["support"], name="ct-session-seg")
    liverId = seg.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    logic = fslogic.FewShotSegmentLogic()
    logic.clearSessions()
    first = logic.prepareJob(volume, seg, [liverId], sliceAxis=2, extent=testing.CT_EXTENT)
    logic.runJob(first, weights=weights, device="cpu")
    assert not first.reusedSession and logic.sessionCount() == 1
    summary = first.summary
    assert summary.slice_confidence.shape == (volume.GetImageData().GetDimensions()[2],)
    assert np.isnan(summary.slice_confidence[testing.CT_SUPPORT_SLICE])
    scored = [1, 2, 4]
    assert all(0.0 <= summary.slice_confidence[z] <= 1.0 for z in scored), summary.slice_confidence
    assert set(summary.suggested_slices) <= set(scored)
    session, reused = logic.getSession(first, weights, "cpu")
    assert reused
    encoded = session.info()["slices_encoded"]
    assert encoded == 4  # slices 1..4: the support and the three scored slices

    # The user corrects slice 1 with the true liver outline and runs again.
    import slicer
    import vtk

    geometry = fslogic.volumeGeometryInSegmentationFrame(volume, seg)
    geometry.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    paint = fslogic._numpyFromImageData(geometry)
    paint[...] = 0
    paint[testing.CT_SUPPORT_SLICE] = first.support[testing.CT_SUPPORT_SLICE] > 0
    paint[1] = files["groundTruth"][1] > 0
    geometry.Modified()
    segLogic = slicer.vtkSlicerSegmentationsModuleLogic
    assert segLogic.SetBinaryLabelmapToSegment(geometry, seg, liverId, segLogic.MODE_REPLACE)
    second = logic.prepareJob(volume, seg, [liverId], sliceAxis=2, extent=testing.CT_EXTENT)
    assert np.nonzero(second.support.any(axis=(1, 2)))[0].tolist() == [1, testing.CT_SUPPORT_SLICE]
    logic.runJob(second, weights=weights, device="cpu")
    assert second.reusedSession
    info = session.info()
    assert info["slices_encoded"] == encoded and info["slices_reused"] > 0
    assert second.summary.slices_processed == 2
    fresh = logic.prepareJob(volume, seg, [liverId], sliceAxis=2, extent=testing.CT_EXTENT)
    logic.runJob(fresh, weights=weights, device="cpu", useSession=False)
    testing.assertSameMask(second.labels, fresh.labels, "corrected run through the session vs without one")
    assert not np.array_equal(second.labels, first.labels)

    # Changed voxels: a new session replaces the old one.
    volume.GetImageData().Modified()
    third = logic.prepareJob(volume, seg, [liverId], sliceAxis=2, extent=testing.CT_EXTENT)
    logic.runJob(third, weights=weights, device="cpu")
    assert not third.reusedSession and logic.sessionCount() == 1
    testing.assertSameMask(third.labels, fresh.labels, "new session after the volume changed")
    logic.clearSessions()
    assert logic.sessionCount() == 0
    with pytest.raises(ValueError):
        session.info()  # closed with the cache


def test_binding_session_matches_segment_and_refuses_bad_input(ct, weights):
    import nrrd
    import slicerio

    image, header = nrrd.read(ct["files"]["image"])
    spacing = np.linalg.norm(header["space directions"], axis=1)
    support = slicerio.extract_segments(slicerio.read_segmentation(ct["files"]["support"]), [("Liver", 1)])["voxels"]
    with binding.Model(weights, device="cpu") as model:
        expected, summary = binding.segment(
            model, image, support, spacing, slice_axis="k", extent="1:4", index_order="ijk"
        )
        with binding.Session(model, image, spacing, index_order="ijk") as session:
            labels, s = session.segment(support, slice_axis="k", extent="1:4")
            np.testing.assert_array_equal(labels, expected)
            np.testing.assert_array_equal(s.slice_confidence, summary.slice_confidence)
            assert s.suggested_slices == summary.suggested_slices
            # Classes as a numpy array (more than one entry: no truth value), duplicates allowed.
            same, _ = session.segment(support, slice_axis="k", extent="1:4", classes=np.array([1, 1], np.uint16))
            np.testing.assert_array_equal(same, expected)
            with pytest.raises(binding.ShapeError):
                session.segment(support[:-1], slice_axis="k")
            with pytest.raises(binding.NoSupportError):
                session.segment(np.zeros_like(support), slice_axis="k")
            state = {}

            def reenter(done, total):
                if done == 1 and "error" not in state:
                    try:
                        session.segment(support, slice_axis="k", extent="1:4")
                    except binding.BusyError as e:
                        state["error"] = e

            session.segment(support, slice_axis="k", extent="1:4", progress=reenter)
            assert (
                isinstance(state.get("error"), binding.BusyError) and state["error"].status == binding.DSPNET_ERROR_BUSY
            )
        with pytest.raises(binding.InvalidArgumentError):
            binding.Session(model, image, spacing, index_order="ijk", feature_budget_bytes=10)
        with pytest.raises(ValueError):
            session.segment(support)


# --------------------------------------------------------------------------------------------------
# Batch script
# --------------------------------------------------------------------------------------------------


def test_batch_script_in_plain_python(ct, weights, workdir):
    out = os.path.join(workdir, "batch-ct.seg.nrrd")
    files = ct["files"]
    proc = subprocess.run(
        [
            sys.executable,
            BATCH,
            "--input",
            files["image"],
            "--support",
            files["support"],
            "--output",
            out,
            "--weights",
            weights,
            "--device",
            "cpu",
            "--axis",
            "k",
            "--extent",
            "1:4",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 segment(s) (Liver) propagated along k: 3 slices processed" in proc.stderr
    liver, ijkToLPS, _, names = readSegNrrdSegment(out, "Liver")
    assert names == ["Liver"]
    np.testing.assert_allclose(ijkToLPS, lpsMatrixOf(ct["volume"]), atol=1e-9)
    testing.assertSameMask(liver, ct["cli"] == 1, "batch_segment.py vs dspnet segment")


def test_batch_script_fails_cleanly(prerequisites, workdir, weights):
    proc = subprocess.run(
        [
            sys.executable,
            BATCH,
            "--input",
            os.path.join(workdir, "nope.nrrd"),
            "--support",
            os.path.join(workdir, "nope.seg.nrrd"),
            "--output",
            os.path.join(workdir, "x.seg.nrrd"),
            "--weights",
            weights,
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "batch_segment: error: cannot read the image" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, BATCH, "--input", "x"], capture_output=True, text=True)
    assert proc.returncode == 2


def test_batch_script_label_volume_support_and_output(ct, weights, workdir):
    """A label volume as the support (each value a segment) and a label volume as the output."""
    scene = testing.newScene()
    volume = testing.loadVolume(scene, ct["files"]["image"])
    support = np.zeros(ct["liver"].shape, np.uint8)
    support[testing.CT_SUPPORT_SLICE] = ct["files"]["groundTruth"][testing.CT_SUPPORT_SLICE]
    labelmap = testing.volumeFromArray(scene, support * 5, testing.ijkToRAS(volume), "support", labelmap=True)
    path = testing.saveVolume(scene, labelmap, os.path.join(workdir, "ct-support-label.nrrd"))
    out = os.path.join(workdir, "batch-out.nrrd")
    # Extent = the support slice only: no slice to score, so this checks the file paths, not the model.
    proc = subprocess.run(
        [
            sys.executable,
            BATCH,
            "--input",
            ct["files"]["image"],
            "--support",
            path,
            "--output",
            out,
            "--weights",
            weights,
            "--axis",
            "k",
            "--extent",
            "3:3",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    written = testing.loadVolume(scene, out, labelmap=True)
    np.testing.assert_allclose(testing.ijkToRAS(written), testing.ijkToRAS(volume), atol=1e-9)
    testing.assertSameMask(testing.slicerArray(written), support, "label volume in, label volume out")
    empty = testing.saveVolume(
        scene,
        testing.volumeFromArray(scene, support * 0, testing.ijkToRAS(volume), "empty", labelmap=True),
        os.path.join(workdir, "empty.nrrd"),
    )
    proc = subprocess.run(
        [
            sys.executable,
            BATCH,
            "--input",
            ct["files"]["image"],
            "--support",
            empty,
            "--output",
            out,
            "--weights",
            weights,
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "no painted segment" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------------
# Logic errors are reported clearly
# --------------------------------------------------------------------------------------------------


def test_logic_reports_unpainted_and_unknown_segments(ct, weights):
    scene = testing.newScene()
    volume = testing.loadVolume(scene, ct["files"]["image"])
    seg = testing.newSegmentation(scene, volume)
    logic = fslogic.FewShotSegmentLogic()
    with pytest.raises(ValueError, match="no painted segment"):
        logic.segment(volume, seg, weights=weights)
    empty = seg.GetSegmentation().AddEmptySegment("", "Empty")
    with pytest.raises(ValueError, match="'Empty' is empty"):
        logic.segment(volume, seg, segmentIds=[empty], weights=weights)
    with pytest.raises(ValueError, match="is not in"):
        logic.segment(volume, seg, segmentIds=["nope"], weights=weights)
    with pytest.raises(ValueError, match="extent"):
        logic.segment(volume, ct["segmentation"], extent="3-4", weights=weights)


def test_prepare_job_resamples_each_segment_once(ct, monkeypatch):
    """Finding the painted segments yields their masks: each segment is resampled onto the volume once."""
    scene = testing.newScene()
    volume = testing.loadVolume(scene, ct["files"]["image"])
    seg = testing.loadSegmentation(scene, ct["files"]["support"])
    empty = seg.GetSegmentation().AddEmptySegment("", "Unpainted")
    calls = []
    original = fslogic.segmentArrayOnVolumeGrid

    def counting(node, segmentId, geometry):
        calls.append(segmentId)
        return original(node, segmentId, geometry)

    monkeypatch.setattr(fslogic, "segmentArrayOnVolumeGrid", counting)
    job = fslogic.FewShotSegmentLogic().prepareJob(volume, seg)
    assert empty not in job.segmentIds and len(job.segmentIds) >= 1
    assert sorted(calls) == sorted(set(calls)) and len(calls) == seg.GetSegmentation().GetNumberOfSegments(), calls
    assert int(job.support.max()) == len(job.segmentIds)


# --------------------------------------------------------------------------------------------------
# Extension build: the CMake bundling puts libdspnet and the default model where the binding looks
# --------------------------------------------------------------------------------------------------

STUB_SLICER_CONFIG = r'''
# A stand-in for Slicer's CMake package: just enough to configure, build and install the extension's
# scripted module the way slicerMacroBuildScriptedModule lays it out (files keep their relative paths).
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/empty.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/empty.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.8/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.8/qt-scripted-modules")
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(f IN LISTS MY_SCRIPTS MY_RESOURCES)
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${f}")
      message(FATAL_ERROR "listed file is missing: ${f}")
    endif()
    get_filename_component(d "${f}" DIRECTORY)
    install(FILES "${CMAKE_CURRENT_SOURCE_DIR}/${f}" DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${d}")
  endforeach()
endfunction()
function(slicer_add_python_unittest)
endfunction()
'''


def test_extension_cmake_bundles_library_and_default_model(prerequisites, weights, tmp_path):
    import shutil

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed: the extension's CMake bundling was not checked")
    stub = tmp_path / "slicer-stub"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_SLICER_CONFIG)
    (stub / "empty.cmake").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"
    library = binding.load_library().path

    def run(*args):
        proc = subprocess.run([cmake, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    out = run(
        "-S",
        EXTENSION_DIR,
        "-B",
        str(build),
        f"-DSlicer_DIR={stub}",
        f"-DFEWSHOT_DSPNET_LIBRARY={library}",
        f"-DFEWSHOT_DEFAULT_WEIGHTS={weights}",
        "-DBUILD_TESTING=OFF",
    )
    assert "bundling libdspnet from" in out
    run("--build", str(build))
    run("--install", str(build), "--prefix", str(prefix))
    modules = prefix / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    for rel in (
        "FewShotSegment.py",
        "FewShotSegmentLib/__init__.py",
        "FewShotSegmentLib/SegmentEditorEffect.py",
        "FewShotSegmentLib/SegmentEditorEffect.png",
        "Resources/UI/FewShotSegment.ui",
        "dspnet/__init__.py",
        "dspnet/binding.py",
        "dspnet/dask.py",
        "dspnet/lib/libdspnet.so",
        "dspnet/lib/weights/dspnet-default.safetensors",
    ):
        assert (modules / rel).is_file(), rel
    assert not (modules / "FewShotSegmentLib" / "binding.py").exists(), "one binding: the dspnet package's"
    assert (build / "lib" / "Slicer-5.8" / "qt-scripted-modules" / "dspnet" / "lib" / "libdspnet.so").is_file()

    # The installed package finds its own library and, through it, the bundled default model: no
    # DSPNET_LIBRARY, no DSPNET_WEIGHTS.
    env = {k: v for k, v in os.environ.items() if k not in ("DSPNET_LIBRARY", "DSPNET_WEIGHTS")}
    code = (
        "import sys; sys.path.insert(0, %r); from FewShotSegmentLib import binding; "
        "lib = binding.load_library(); m = binding.Model(None, device='cpu'); print(lib.path); print(m.device); "
        "print(binding.__file__)" % str(modules)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    path, device, binding_file = proc.stdout.split()
    assert path == str(modules / "dspnet" / "lib" / "libdspnet.so") and device == "cpu"
    assert binding_file == str(modules / "dspnet" / "binding.py"), "the bundled package, not another dspnet"


def test_the_extension_and_the_package_read_slice_axes_alike():
    """One parser: the logic defers to the dspnet package's for everything but slice nodes."""
    resolve = fslogic.FewShotSegmentLogic.resolveSliceAxis
    for value, axis in ((None, None), ("auto", None), ("Auto", None), (-1, None), ("i", 0), ("J", 1), ("k", 2)):
        assert resolve(value) == axis == binding.parse_slice_axis(value), value
    for value in (0, 1, 2, np.int64(2)):
        assert resolve(value) == int(value) == binding.parse_slice_axis(value)
    for bad in ("x", "1", 3, -2, 1.5):
        with pytest.raises(ValueError, match="slice axis"):
            resolve(bad)
        with pytest.raises(binding.InvalidArgumentError, match="slice axis"):
            binding.parse_slice_axis(bad)
    with pytest.raises(ValueError, match="a volume is needed"):
        resolve(testing.newScene().AddNewNodeByClass("vtkMRMLSliceNode"))
