"""Test scenarios shared by the module's in-Slicer test (``FewShotSegmentTest``) and the CI tests that
run under PyPI's ``slicer-core`` (``Testing/Python/test_slicer_core.py``). Qt-free.

Each scenario builds real MRML nodes from the repository's demo volumes (cropped to a few slices),
paints a support slice into a segmentation the way the Paint effect does (``SetBinaryLabelmapToSegment``
on a one-slice extent), saves image and support to files with Slicer's own writers, runs
:class:`FewShotSegmentLogic` on nodes read back from those files and ``dspnet segment`` on the files
themselves, and checks that both agree voxel for voxel.

What is needed, and where it is looked for:
- the repository (demo data, CLI): ``$DSPNET_SOURCE_DIR``, else three folders above this package;
- the ``dspnet`` tool: ``$DSPNET_CLI``, else ``<repo>/target/release/dspnet``;
- weights: ``$DSPNET_TEST_WEIGHTS``, else synthetic ResNet-50 weights made with the tool;
- libdspnet: as :mod:`FewShotSegmentLib.binding` finds it (``$DSPNET_LIBRARY``, ...).
"""

import os
import subprocess

import numpy as np

from . import logic as fslogic

HERE = os.path.dirname(os.path.abspath(__file__))

# CT scenario: LiTS liver crop, axial support slice.
CT_BOX = dict(i=(8, 104), j=(16, 112), k=(58, 64))  # 96 x 96 x 6 voxels
CT_SUPPORT_SLICE = 3  # k index in the crop
CT_EXTENT = (1, 4)  # slices 1, 2, 4 are segmented (3 is the support)
CT_LIVER_LABEL = 1

# MRI scenario: Colin27 crop around the left putamen and thalamus, reoriented so that the sagittal axis
# is the volume's k axis (non-identity directions), with anisotropic spacing; support on a sagittal slice.
MRI_BOX = dict(i=(28, 33), j=(28, 96), k=(30, 72))  # 5 sagittal slices
MRI_SPACING = (0.8, 1.2, 2.0)  # new i, j, k
MRI_SUPPORT_SLICE = 2  # new k index
MRI_EXTENT = (1, 3)
MRI_SEGMENTS = (("Putamen_L", 73), ("Thalamus_L", 77))


# --------------------------------------------------------------------------------------------------
# Locating things
# --------------------------------------------------------------------------------------------------


def repositoryRoot():
    root = os.environ.get("DSPNET_SOURCE_DIR")
    if root:
        return os.path.abspath(root)
    return os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def dataDir():
    return os.path.join(repositoryRoot(), "tests", "data")


def cliPath():
    return os.environ.get("DSPNET_CLI") or os.path.join(repositoryRoot(), "target", "release", "dspnet")


def missingPrerequisites():
    """A sentence saying what is missing to run the scenarios, or None."""
    missing = []
    if not os.path.isfile(os.path.join(dataDir(), "ct-liver", "image.nii.gz")):
        missing.append(f"the demo data ({dataDir()}; set DSPNET_SOURCE_DIR to the libdspnet repository)")
    if not os.access(cliPath(), os.X_OK):
        missing.append(f"the dspnet tool ({cliPath()}; run cargo build --release or set DSPNET_CLI)")
    try:
        from . import binding

        binding.load_library()
    except ImportError as e:
        missing.append(str(e))
    return "; ".join(missing) or None


def syntheticWeights(workDir, depth=50):
    """$DSPNET_TEST_WEIGHTS, or deterministic synthetic weights written by ``dspnet synthetic-weights``."""
    given = os.environ.get("DSPNET_TEST_WEIGHTS")
    if given:
        return given
    path = os.path.join(workDir, f"synthetic-resnet{depth}.safetensors")
    if not os.path.isfile(path):
        subprocess.run(
            [cliPath(), "synthetic-weights", "--depth", str(depth), "-o", path], check=True, stdout=subprocess.DEVNULL
        )
    return path


# --------------------------------------------------------------------------------------------------
# MRML helpers that work in Slicer and in slicer-core (no slicer.mrmlScene, no slicer.modules)
# --------------------------------------------------------------------------------------------------


def newScene():
    """A fresh scene with the slice orientation presets (slicer-core does not add them)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    fslogic.ensureSegmentationConverterRules()
    return scene


def loadVolume(scene, path, labelmap=False, name=None):
    node = scene.AddNewNodeByClass(
        "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode",
        name or os.path.basename(path).split(".")[0],
    )
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    if not storage.ReadData(node):
        raise IOError(f"cannot read {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def saveVolume(scene, node, path):
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    storage.SetUseCompression(True)
    if not storage.WriteData(node):
        raise IOError(f"cannot write {path}")
    return path


def loadSegmentation(scene, path, name=None):
    fslogic.ensureSegmentationConverterRules()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or os.path.basename(path).split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(path)
    if not storage.ReadData(node):
        raise IOError(f"cannot read {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def saveSegmentation(scene, node, path):
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(path)
    storage.SetUseCompression(True)
    if not storage.WriteData(node):
        raise IOError(f"cannot write {path}")
    return path


def ijkToRAS(node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volumeFromArray(scene, arrayKJI, ijkToRASMatrix, name, labelmap=False):
    """A volume node holding a copy of ``arrayKJI`` with the given 4x4 IJK-to-RAS matrix."""
    import slicer
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(arrayKJI))
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(ijkToRASMatrix[r][c]))
    node.SetIJKToRASMatrix(m)
    return node


def cropReorient(arrayKJI, matrix, box, permutation=(0, 1, 2), flips=(False, False, False), spacing=None):
    """Crop ``arrayKJI`` to ``box`` (half-open IJK ranges), then make new index axis a the old axis
    ``permutation[a]`` (reversed where ``flips[a]``); optionally declare a new spacing (i, j, k).
    Returns (new array [k, j, i], new 4x4 IJK-to-RAS matrix)."""
    (i0, i1), (j0, j1), (k0, k1) = box["i"], box["j"], box["k"]
    sub = arrayKJI[k0:k1, j0:j1, i0:i1].T  # [i, j, k]
    sizes = sub.shape
    new = np.transpose(sub, permutation)
    for a, flip in enumerate(flips):
        if flip:
            new = np.flip(new, axis=a)
    # old index o = P n + c (plus the crop offset)
    p = np.zeros((4, 4))
    p[3, 3] = 1.0
    for a, old in enumerate(permutation):
        if flips[a]:
            p[old, a] = -1.0
            p[old, 3] = sizes[old] - 1
        else:
            p[old, a] = 1.0
    offset = np.eye(4)
    offset[:3, 3] = (i0, j0, k0)
    m = np.asarray(matrix, float) @ offset @ p
    if spacing is not None:
        directions = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0)
        m[:3, :3] = directions * np.asarray(spacing, float)
    return np.ascontiguousarray(new.T), m


def addPaintedSegment(segmentationNode, volumeNode, name, maskKJI, sliceAxis, sliceIndex, color=(0.9, 0.6, 0.2)):
    """Add a segment and paint ``maskKJI`` on one slice only, as the Paint effect would (the labelmap is
    written on a one-slice extent of the volume's grid)."""
    segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", name, list(color))
    if not segmentId:
        raise RuntimeError("cannot add a segment (segmentation converter rules missing?)")
    paintSlice(segmentationNode, volumeNode, segmentId, maskKJI, sliceAxis, sliceIndex)
    return segmentId


def paintSlice(segmentationNode, volumeNode, segmentId, maskKJI, sliceAxis, sliceIndex):
    """Write ``maskKJI``'s voxels of one slice into a segment, on that slice's extent only."""
    import slicer
    import vtk

    geometry = fslogic.volumeGeometryInSegmentationFrame(volumeNode, segmentationNode)
    geometry.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    arr = fslogic._numpyFromImageData(geometry)
    arr[...] = 0
    index = [slice(None)] * 3
    index[2 - sliceAxis] = sliceIndex
    arr[tuple(index)] = np.asarray(maskKJI)[tuple(index)] > 0
    geometry.Modified()
    extent = list(geometry.GetExtent())
    extent[2 * sliceAxis] = extent[2 * sliceAxis + 1] = sliceIndex
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    # MODE_REPLACE limited to the painted slice. (MODE_MERGE_MAX into a freshly added, empty segment that
    # shares a layer with another segment wrote the other segment's label value in slicer-core 5.13.)
    if not logic.SetBinaryLabelmapToSegment(geometry, segmentationNode, segmentId, logic.MODE_REPLACE, extent):
        raise RuntimeError("painting failed")


def newSegmentation(scene, volumeNode, name="Segmentation"):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    return node


def segmentArray(segmentationNode, segmentId, volumeNode):
    """A segment as a 0/1 uint8 array [k, j, i] on the volume's grid."""
    geometry = fslogic.volumeGeometryInSegmentationFrame(volumeNode, segmentationNode)
    return fslogic.segmentArrayOnVolumeGrid(segmentationNode, segmentId, geometry)


def sliceNode(scene, name, orientation):
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
    node.SetLayoutName(name)
    if not node.SetOrientation(orientation):
        raise RuntimeError(f"no slice orientation preset {orientation!r}")
    return node


def runCli(image, support, output, weights, axis, extent, device="cpu", propagation="memory"):
    cmd = [
        cliPath(),
        "segment",
        image,
        "--support",
        support,
        "-o",
        output,
        "--weights",
        weights,
        "--axis",
        axis,
        "--extent",
        f"{extent[0]}:{extent[1]}",
        "--device",
        device,
        "--propagation",
        propagation,
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return output


def assertSameMask(actual, expected, what):
    actual = np.asarray(actual) > 0
    expected = np.asarray(expected) > 0
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != {expected.shape}")
    diff = np.argwhere(actual != expected)
    if len(diff):
        raise AssertionError(
            f"{what}: {len(diff)} voxels differ (of {actual.sum()} vs {expected.sum()} "
            f"labelled), first at [k, j, i] = {tuple(diff[0])}"
        )
    if not expected.any():
        raise AssertionError(f"{what}: the expected mask is empty, nothing was compared")


# --------------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------------


def prepareCtFiles(scene, workDir):
    """Crop the CT demo volume, write it with Slicer's writer, paint the liver on one axial slice and save
    the support as a .seg.nrrd. Returns paths and the expected support mask."""
    ct = loadVolume(scene, os.path.join(dataDir(), "ct-liver", "image.nii.gz"), name="ct-full")
    gt = loadVolume(scene, os.path.join(dataDir(), "ct-liver", "labels.nii.gz"), labelmap=True, name="ct-gt")
    import slicer

    image, m = cropReorient(slicer.util.arrayFromVolume(ct), ijkToRAS(ct), CT_BOX)
    labels, _ = cropReorient(slicer.util.arrayFromVolume(gt), ijkToRAS(gt), CT_BOX)
    imagePath = saveVolume(scene, volumeFromArray(scene, image, m, "ct"), os.path.join(workDir, "ct.nrrd"))
    volume = loadVolume(scene, imagePath, name="ct")
    seg = newSegmentation(scene, volume, "ct-support")
    liver = (labels == CT_LIVER_LABEL).astype(np.uint8)
    addPaintedSegment(seg, volume, "Liver", liver, sliceAxis=2, sliceIndex=CT_SUPPORT_SLICE, color=(0.8, 0.4, 0.3))
    supportPath = saveSegmentation(scene, seg, os.path.join(workDir, "ct-support.seg.nrrd"))
    return dict(image=imagePath, support=supportPath, groundTruth=liver)


def runCtAxialScenario(scene, workDir, weights, logic=None):
    """Liver on one axial slice, slice axis from an axial (Red) slice node; one bystander segment that
    overlaps the result must stay untouched. Returns a dict of nodes, arrays and paths."""
    logic = logic or fslogic.FewShotSegmentLogic()
    files = prepareCtFiles(scene, workDir)
    volume = loadVolume(scene, files["image"], name="ct")
    seg = loadSegmentation(scene, files["support"], name="ct-segmentation")
    liverId = seg.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    if not liverId:
        raise AssertionError("segment 'Liver' lost in the .seg.nrrd round trip")
    supportMask = segmentArray(seg, liverId, volume)
    painted = np.nonzero(supportMask.any(axis=(1, 2)))[0].tolist()
    if painted != [CT_SUPPORT_SLICE]:
        raise AssertionError(f"support painted on slices {painted}, expected [{CT_SUPPORT_SLICE}]")

    # A segment the user did not ask to propagate, overlapping where the liver will grow.
    bystander = np.zeros(supportMask.shape, np.uint8)
    bystander[:, 30:60, 20:50] = 1
    bystanderId = addPaintedSegment(
        seg, volume, "Bystander", bystander, sliceAxis=2, sliceIndex=2, color=(0.2, 0.5, 0.9)
    )
    bystanderBefore = segmentArray(seg, bystanderId, volume)

    red = sliceNode(scene, "Red", "Axial")
    result = logic.segment(
        volume, seg, segmentIds=[liverId], sliceAxis=red, weights=weights, device="cpu", extent=CT_EXTENT
    )
    if result.segmentIds != [liverId] or result.sliceAxis != 2:
        raise AssertionError(f"unexpected result {result}")
    expectedSlices = sum(1 for s in range(CT_EXTENT[0], CT_EXTENT[1] + 1) if s != CT_SUPPORT_SLICE)
    if result.slicesProcessed != expectedSlices:
        raise AssertionError(f"{result.slicesProcessed} slices processed, expected {expectedSlices}")

    cliOut = runCli(files["image"], files["support"], os.path.join(workDir, "ct-cli.nrrd"), weights, "k", CT_EXTENT)
    cli = slicerArray(loadVolume(scene, cliOut, labelmap=True, name="ct-cli"))
    liverResult = segmentArray(seg, liverId, volume)
    assertSameMask(liverResult, cli == 1, "CT liver: logic vs dspnet segment")
    assertSameMask(segmentArray(seg, bystanderId, volume), bystanderBefore, "CT bystander segment after the run")
    if not (liverResult[CT_SUPPORT_SLICE] == supportMask[CT_SUPPORT_SLICE]).all():
        raise AssertionError("the support slice was changed")

    resultPath = saveSegmentation(scene, seg, os.path.join(workDir, "ct-result.seg.nrrd"))
    return dict(
        scene=scene,
        files=files,
        volume=volume,
        segmentation=seg,
        result=result,
        cliOutput=cliOut,
        cli=cli,
        liverId=liverId,
        bystanderId=bystanderId,
        bystander=bystanderBefore,
        liver=liverResult,
        resultPath=resultPath,
        logic=logic,
    )


def prepareMriFiles(scene, workDir):
    import slicer

    mri = loadVolume(scene, os.path.join(dataDir(), "mri-brain-aal", "image.nii.gz"), name="mri-full")
    gt = loadVolume(scene, os.path.join(dataDir(), "mri-brain-aal", "labels.nii.gz"), labelmap=True, name="mri-gt")
    # new i = old j reversed (anterior -> posterior), new j = old k (superior), new k = old i reversed
    # (right -> left): a rotation, so the directions are far from identity; the sagittal axis becomes k.
    kwargs = dict(permutation=(1, 2, 0), flips=(True, False, True), spacing=MRI_SPACING)
    image, m = cropReorient(slicer.util.arrayFromVolume(mri), ijkToRAS(mri), MRI_BOX, **kwargs)
    labels, _ = cropReorient(slicer.util.arrayFromVolume(gt), ijkToRAS(gt), MRI_BOX, **kwargs)
    imagePath = saveVolume(scene, volumeFromArray(scene, image, m, "mri"), os.path.join(workDir, "mri.nrrd"))
    volume = loadVolume(scene, imagePath, name="mri")
    seg = newSegmentation(scene, volume, "mri-support")
    masks = {}
    for (name, value), color in zip(MRI_SEGMENTS, ((0.9, 0.8, 0.2), (0.3, 0.8, 0.4))):
        masks[name] = (labels == value).astype(np.uint8)
        if not masks[name][MRI_SUPPORT_SLICE].any():
            raise AssertionError(f"{name} is absent from the support slice")
        addPaintedSegment(seg, volume, name, masks[name], sliceAxis=2, sliceIndex=MRI_SUPPORT_SLICE, color=color)
    supportPath = saveSegmentation(scene, seg, os.path.join(workDir, "mri-support.seg.nrrd"))
    return dict(image=imagePath, support=supportPath, groundTruth=masks, matrix=m)


def runMriSagittalScenario(scene, workDir, weights, logic=None):
    """Two segments painted on one sagittal slice of a rotated, anisotropic volume; the slice axis comes
    from a sagittal (Yellow) slice node mapped into IJK; all non-empty segments are propagated."""
    logic = logic or fslogic.FewShotSegmentLogic()
    files = prepareMriFiles(scene, workDir)
    volume = loadVolume(scene, files["image"], name="mri")
    spacing = volume.GetSpacing()
    if not np.allclose(spacing, MRI_SPACING):
        raise AssertionError(f"spacing {spacing} read back, expected {MRI_SPACING}")
    directions = np.zeros((3, 3))
    volume.GetIJKToRASDirections(directions)
    if np.allclose(directions, np.eye(3)):
        raise AssertionError("the test volume should have non-identity directions")
    seg = loadSegmentation(scene, files["support"], name="mri-segmentation")
    yellow = sliceNode(scene, "Yellow", "Sagittal")
    axis = fslogic.sliceAxisFromSliceNode(yellow, volume)
    if axis != 2:
        raise AssertionError(f"the sagittal view maps to IJK axis {axis}, expected 2 (k)")
    result = logic.segment(volume, seg, sliceAxis=yellow, weights=weights, device="cpu", extent=MRI_EXTENT)
    names = [n for n, _ in MRI_SEGMENTS]
    if result.segmentNames != names:
        raise AssertionError(f"segments written: {result.segmentNames}, expected {names}")

    cliOut = runCli(files["image"], files["support"], os.path.join(workDir, "mri-cli.nrrd"), weights, "k", MRI_EXTENT)
    cli = slicerArray(loadVolume(scene, cliOut, labelmap=True, name="mri-cli"))
    # The CLI numbers classes by the .seg.nrrd label values; map them back by segment name.
    cliValues = supportLabelValues(files["support"])
    arrays = {}
    for name in names:
        segmentId = seg.GetSegmentation().GetSegmentIdBySegmentName(name)
        arrays[name] = segmentArray(seg, segmentId, volume)
        assertSameMask(arrays[name], cli == cliValues[name], f"MRI {name}: logic vs dspnet segment")
    resultPath = saveSegmentation(scene, seg, os.path.join(workDir, "mri-result.seg.nrrd"))
    return dict(
        scene=scene,
        files=files,
        volume=volume,
        segmentation=seg,
        result=result,
        cli=cli,
        arrays=arrays,
        resultPath=resultPath,
        cliOutput=cliOut,
    )


def slicerArray(volumeNode):
    import slicer

    return np.array(slicer.util.arrayFromVolume(volumeNode))


def supportLabelValues(segNrrdPath):
    """Segment name -> label value in a .seg.nrrd, from its header (the values the CLI uses as classes,
    segments of a single layer; every test support is one layer)."""
    values = {}
    fields = {}
    with open(segNrrdPath, "rb") as f:
        for raw in f:
            line = raw.decode("latin-1").rstrip("\n")
            if not line:
                break
            if ":=" in line:
                key, value = line.split(":=", 1)
                fields[key] = value
    n = 0
    while f"Segment{n}_Name" in fields:
        values[fields[f"Segment{n}_Name"]] = int(fields.get(f"Segment{n}_LabelValue", n + 1))
        n += 1
    return values
