"""Qt-free logic of the Few-Shot Segment extension: MRML nodes in, propagated segments out.

Works inside 3D Slicer and with PyPI's ``slicer-core`` (MRML and module logic without Qt): it uses
only ``slicer.vtk*`` classes, ``slicer.util.arrayFromVolume`` and the static methods of
``vtkSlicerSegmentationsModuleLogic``. It never touches ``slicer.mrmlScene``, ``slicer.modules`` or
``slicer.app`` (they do not exist under slicer-core), except to read the module settings when
``slicer.app`` is there.

Three steps, so that a GUI can run the slow one on a worker thread:

1. :meth:`FewShotSegmentLogic.prepareJob` (main thread, reads MRML): the volume as a ``[k, j, i]``
   array, the painted segments rasterised onto the volume's grid as one uint16 label array (segment n of
   the list gets label n + 1), spacing in i, j, k order, the slice axis.
2. :meth:`FewShotSegmentLogic.runJob` (any thread, no MRML, GIL released while libdspnet works).
3. :meth:`FewShotSegmentLogic.writeJobResult` (main thread): each label written back into the segment
   it came from, on the volume's geometry.

:meth:`FewShotSegmentLogic.segment` does all three synchronously.
"""

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import binding

__all__ = [
    "FewShotSegmentLogic",
    "SegmentationJob",
    "SegmentResult",
    "SegmentationTask",
    "ObliqueViewError",
    "sliceAxisFromNormal",
    "sliceAxisFromSliceNode",
    "ensureSegmentationConverterRules",
    "SETTINGS_WEIGHTS_KEY",
    "SETTINGS_DEVICE_KEY",
]

SETTINGS_WEIGHTS_KEY = "FewShotSegment/WeightsPath"
SETTINGS_DEVICE_KEY = "FewShotSegment/Device"

AXIS_NAMES = ("i", "j", "k")


class ObliqueViewError(ValueError):
    """The slice view is not aligned with the volume's voxel grid."""


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def sliceAxisFromNormal(normalRAS, ijkToRASDirections, toleranceDegrees=1.0, viewName="The slice view"):
    """The IJK axis (0 = i, 1 = j, 2 = k) that a view normal (in the volume's RAS frame) is parallel to.

    ``ijkToRASDirections``: 3x3, column c is the RAS direction of index axis c (``GetIJKToRASDirections``).
    Raises :class:`ObliqueViewError` when the normal is more than ``toleranceDegrees`` from every axis."""
    d = np.asarray(ijkToRASDirections, dtype=float).reshape(3, 3)
    n = np.asarray(normalRAS, dtype=float).reshape(3)
    if not np.all(np.isfinite(n)) or np.linalg.norm(n) == 0:
        raise ValueError(f"{viewName} has no valid normal")
    nijk = np.linalg.solve(d, n)  # the normal expressed along the index axes
    cosines = np.abs(nijk) / np.linalg.norm(nijk)
    axis = int(np.argmax(cosines))
    angle = float(np.degrees(np.arccos(min(1.0, cosines[axis]))))
    if angle > toleranceDegrees:
        raise ObliqueViewError(
            f"{viewName} is oblique to the volume's voxel grid: its normal is {angle:.1f} degrees away from the "
            f"nearest volume axis ({AXIS_NAMES[axis]}). Few-Shot segments along the volume's own slices: "
            "choose 'Rotate to volume plane' in the view's menu (or reset the view to axial, sagittal or "
            "coronal when the volume is not rotated), repaint the slice there, or set the slice axis to Auto."
        )
    return axis


def _vtkMatrixToNumpy(m):
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _worldToVolumeMatrix(volumeNode):
    """4x4 world-to-volume-parent matrix (identity without a parent transform)."""
    import vtk
    import slicer

    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    m = vtk.vtkMatrix4x4()
    if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, m):
        raise ValueError(
            f"{volumeNode.GetName()} is under a non-linear transform; harden it first "
            "(Data module: right-click the transform, 'Harden transform')"
        )
    return _vtkMatrixToNumpy(m)


def sliceAxisFromSliceNode(sliceNode, volumeNode, toleranceDegrees=1.0):
    """The volume's IJK axis that a slice view (``vtkMRMLSliceNode``) looks along, taking the volume's
    parent transform into account. Raises :class:`ObliqueViewError` for oblique views."""
    sliceToRAS = _vtkMatrixToNumpy(sliceNode.GetSliceToRAS())
    normalWorld = sliceToRAS[:3, 2]
    normalLocal = _worldToVolumeMatrix(volumeNode)[:3, :3] @ normalWorld
    directions = np.zeros((3, 3))
    volumeNode.GetIJKToRASDirections(directions)
    name = sliceNode.GetLayoutName() or sliceNode.GetName() or "The slice view"
    return sliceAxisFromNormal(normalLocal, directions, toleranceDegrees, viewName=f"The {name} view")


def ensureSegmentationConverterRules():
    """Register the standard segmentation converter rules when none are registered.

    3D Slicer registers them at start-up; ``slicer-core`` does not, and without them a segmentation
    cannot even hold a binary labelmap ("Unable to construct empty representation type 'Binary
    labelmap'"). A no-op inside Slicer."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if len(factory.GetConverterRules()) > 0:
        return False
    for cls in (
        slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
        slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule,
        slicer.vtkClosedSurfaceToFractionalLabelmapConversionRule,
        slicer.vtkFractionalLabelmapToClosedSurfaceConversionRule,
    ):
        factory.RegisterConverterRule(cls())
    return True


def _numpyFromImageData(imageData):
    import vtk.util.numpy_support as ns

    dims = imageData.GetDimensions()
    return ns.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(tuple(reversed(dims)))


def _segmentIds(segmentationNode):
    """The segmentation's segment IDs, in its order."""
    import vtk

    ids = vtk.vtkStringArray()
    segmentationNode.GetSegmentation().GetSegmentIDs(ids)
    return [ids.GetValue(n) for n in range(ids.GetNumberOfValues())]


def volumeGeometryInSegmentationFrame(volumeNode, segmentationNode):
    """An empty ``vtkOrientedImageData`` with the volume's grid, expressed in the segmentation node's
    coordinate frame (they differ when either node is under a transform)."""
    import slicer
    import vtk

    geometry = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
        volumeNode, segmentationNode.GetParentTransformNode()
    )
    if geometry is None:
        raise ValueError(
            f"cannot map the grid of {volumeNode.GetName()} into the frame of {segmentationNode.GetName()} "
            "(a non-linear transform between them? harden it first)"
        )
    empty = slicer.vtkOrientedImageData()
    empty.SetExtent(geometry.GetExtent())
    empty.SetSpacing(geometry.GetSpacing())
    empty.SetOrigin(geometry.GetOrigin())
    m = vtk.vtkMatrix4x4()
    geometry.GetDirectionMatrix(m)
    empty.SetDirectionMatrix(m)
    return empty


def segmentArrayOnVolumeGrid(segmentationNode, segmentId, referenceGeometry):
    """A segment as a uint8 0/1 array ``[k, j, i]`` on ``referenceGeometry``'s grid (nearest neighbour),
    from the segment's binary labelmap (shared layers and cropped extents handled)."""
    import slicer
    import vtk

    labelmapName = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    segmentation = segmentationNode.GetSegmentation()
    if not segmentation.ContainsRepresentation(labelmapName):
        segmentationNode.CreateBinaryLabelmapRepresentation()
    ext = referenceGeometry.GetExtent()
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    labelmap = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
    if labelmap.IsEmpty() or labelmap.GetPointData().GetScalars() is None:
        return np.zeros(shape, np.uint8)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, referenceGeometry, resampled, False, False
    ):
        raise RuntimeError(f"cannot resample segment {segmentId} onto the volume's grid")
    if tuple(resampled.GetExtent()) != tuple(ext):
        pad = vtk.vtkImageConstantPad()
        pad.SetInputData(resampled)
        pad.SetOutputWholeExtent(ext)
        pad.SetConstant(0)
        pad.Update()
        padded = slicer.vtkOrientedImageData()
        padded.ShallowCopy(pad.GetOutput())
        resampled = padded
    return (_numpyFromImageData(resampled) > 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Job and result
# --------------------------------------------------------------------------------------------------


@dataclass
class SegmentationJob:
    """Everything a run needs, without MRML objects: safe to hand to a worker thread."""

    volumeNodeId: str
    segmentationNodeId: str
    segmentIds: list
    segmentNames: list
    image: np.ndarray  # [k, j, i], the volume's own voxels (a view when possible)
    support: np.ndarray  # [k, j, i] uint16, segment n of segmentIds painted with n + 1
    spacing: tuple  # i, j, k (mm)
    sliceAxis: int = None  # 0/1/2, or None for automatic
    extent: object = "auto"
    modality: str = "auto"
    fov: str = "slice"
    components: str = "support"
    propagation: str = "memory"  # "memory" (follow the structure) or "independent"
    labels: np.ndarray = None  # result, [k, j, i] uint16
    summary: object = None
    overlapVoxels: int = 0  # voxels painted in more than one input segment (the later one wins)
    imageModifiedTime: int = 0  # the volume's voxel modified time when the job was prepared (session key)
    reusedSession: bool = False  # the run reused a session: slices encoded by an earlier run were not encoded again
    keepAlive: list = field(default_factory=list, repr=False)


@dataclass
class SegmentResult:
    """What :meth:`FewShotSegmentLogic.segment` did."""

    segmentIds: list
    segmentNames: list
    slicesProcessed: int
    seconds: float
    sliceAxis: int
    voxels: dict  # segment ID -> voxels in the written result
    suggestedSlices: list = field(default_factory=list)  # slices to check or paint next, least confident first
    sliceConfidence: object = None  # per slice along the axis: confidence in [0, 1], NaN where not scored
    reusedSession: bool = False  # slices encoded by an earlier run on this volume were reused

    def __str__(self):
        axis = AXIS_NAMES[self.sliceAxis] if self.sliceAxis in (0, 1, 2) else "?"
        return (
            f"{len(self.segmentIds)} segment(s) ({', '.join(self.segmentNames)}) propagated along {axis}: "
            f"{self.slicesProcessed} slices processed in {self.seconds:.1f} s"
        )


# --------------------------------------------------------------------------------------------------
# Logic
# --------------------------------------------------------------------------------------------------


class FewShotSegmentLogic:
    """Few-shot propagation of painted segments through a volume with libdspnet. No Qt, no GUI."""

    # Loaded models, shared by every logic instance in the process (the effect, the module, scripts):
    # a model is immutable and thread-safe, and loading one costs time and memory.
    _models = {}
    _modelsLock = threading.Lock()
    # Interactive sessions (encoded slices kept between runs), most recently used last: a correction on
    # the same volume re-runs in seconds. Keyed by (volume node ID, voxel modified time, spacing, model
    # key); a changed volume gets a new session. At most MAX_SESSIONS are kept (each holds a copy of its
    # volume and up to 1 GiB of features).
    _sessions = {}
    _sessionsLock = threading.Lock()
    MAX_SESSIONS = 2

    def __init__(self, libraryPath=None):
        self.libraryPath = libraryPath

    # -- library and model ---------------------------------------------------------------------

    def library(self):
        """The loaded libdspnet (raises ``binding.LibraryNotFoundError`` with the places searched)."""
        return binding.load_library(self.libraryPath)

    @staticmethod
    def defaultWeightsPath():
        """The weights file set in the module settings (inside Slicer), or None for the library's own
        default model search ($DSPNET_WEIGHTS, then ``weights/dspnet-default.safetensors`` next to the
        library, ...)."""
        try:
            import slicer

            app = getattr(slicer, "app", None)
            if app is not None:
                value = app.userSettings().value(SETTINGS_WEIGHTS_KEY, "")
                if value:
                    return str(value)
        except Exception:  # no Qt settings here: the library decides
            pass
        return None

    def getModel(self, weights=None, device="auto"):
        """A cached ``binding.Model`` for (weights, device); thread-safe. weights None = the default model."""
        if weights in (None, ""):
            weights = self.defaultWeightsPath()
        lib = self.library()
        key = (lib.path, os.path.abspath(os.fspath(weights)) if weights else None, device or "auto")
        with FewShotSegmentLogic._modelsLock:
            model = FewShotSegmentLogic._models.get(key)
            if model is None:
                model = binding.Model(key[1], device=key[2], library=lib)
                FewShotSegmentLogic._models[key] = model
            return model

    def getSession(self, job, weights=None, device="auto"):
        """The session for the job's volume as it is now (created on first use; thread-safe).
        Returns (session, reused): reused is True when the session existed before this call."""
        model = self.getModel(weights, device)
        key = (job.volumeNodeId, job.imageModifiedTime, tuple(job.spacing), tuple(job.image.shape), id(model))
        with FewShotSegmentLogic._sessionsLock:
            session = FewShotSegmentLogic._sessions.pop(key, None)
            reused = session is not None
            if session is None:
                # Sessions of an older version of this volume are of no use any more.
                for k in [k for k in FewShotSegmentLogic._sessions if k[0] == job.volumeNodeId]:
                    FewShotSegmentLogic._sessions.pop(k).close()
                session = binding.Session(model, job.image, job.spacing, index_order="kji")
            FewShotSegmentLogic._sessions[key] = session
            while len(FewShotSegmentLogic._sessions) > FewShotSegmentLogic.MAX_SESSIONS:
                oldest = next(iter(FewShotSegmentLogic._sessions))
                FewShotSegmentLogic._sessions.pop(oldest).close()
        return session, reused

    @staticmethod
    def clearSessions(volumeNodeId=None):
        """Free the sessions (of one volume node, or all): their feature memory is released."""
        with FewShotSegmentLogic._sessionsLock:
            keys = [k for k in FewShotSegmentLogic._sessions if volumeNodeId is None or k[0] == volumeNodeId]
            sessions = [FewShotSegmentLogic._sessions.pop(k) for k in keys]
        for session in sessions:
            session.close()

    @staticmethod
    def sessionCount():
        with FewShotSegmentLogic._sessionsLock:
            return len(FewShotSegmentLogic._sessions)

    @staticmethod
    def clearModels():
        """Forget the loaded models (after the weights setting changed). Runs still using one finish
        normally: libdspnet keeps a model alive until its last call returns."""
        with FewShotSegmentLogic._modelsLock:
            models = list(FewShotSegmentLogic._models.values())
            FewShotSegmentLogic._models.clear()
        for m in models:
            m.close()

    # -- step 1: MRML -> arrays (main thread) -------------------------------------------------------

    @staticmethod
    def nonEmptySegmentIds(segmentationNode, referenceGeometry=None):
        """IDs of the segments that hold at least one voxel, in the segmentation's order."""
        if referenceGeometry is not None:
            return list(FewShotSegmentLogic.nonEmptySegmentMasks(segmentationNode, referenceGeometry))
        import slicer

        result = []
        for segmentId in _segmentIds(segmentationNode):
            lm = slicer.vtkOrientedImageData()
            segmentationNode.GetBinaryLabelmapRepresentation(segmentId, lm)
            if not lm.IsEmpty() and lm.GetScalarRange()[1] > 0:
                result.append(segmentId)
        return result

    @staticmethod
    def nonEmptySegmentMasks(segmentationNode, referenceGeometry):
        """{segment ID: boolean [k, j, i] mask on ``referenceGeometry``} of the segments holding at least one
        voxel there, in the segmentation's order. Each segment is resampled once."""
        masks = {}
        for segmentId in _segmentIds(segmentationNode):
            mask = segmentArrayOnVolumeGrid(segmentationNode, segmentId, referenceGeometry).astype(bool)
            if mask.any():
                masks[segmentId] = mask
        return masks

    def prepareJob(
        self,
        volumeNode,
        segmentationNode,
        segmentIds=None,
        sliceAxis=None,
        extent="auto",
        modality="auto",
        fov="slice",
        components="support",
        propagation="memory",
    ):
        """Read the volume and the painted segments into a :class:`SegmentationJob` (main thread)."""
        import slicer

        if volumeNode is None or segmentationNode is None:
            raise ValueError("a volume and a segmentation are required")
        if volumeNode.GetImageData() is None:
            raise ValueError(f"volume {volumeNode.GetName()} has no voxels")
        if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
            raise ValueError(
                f"volume {volumeNode.GetName()} has several components per voxel (colour or vector "
                "image); Few-Shot needs a scalar CT or MRI volume"
            )
        ensureSegmentationConverterRules()

        axis = self.resolveSliceAxis(sliceAxis, volumeNode)
        binding.parse_extent(extent)  # validate early, with a clear message

        image = slicer.util.arrayFromVolume(volumeNode)  # [k, j, i] view of the VTK buffer
        imageModifiedTime = int(volumeNode.GetImageData().GetMTime())
        spacing = tuple(float(s) for s in volumeNode.GetSpacing())
        geometry = volumeGeometryInSegmentationFrame(volumeNode, segmentationNode)

        segmentation = segmentationNode.GetSegmentation()
        masks = {}  # resampled once: finding the painted segments yields their masks
        if segmentIds is None:
            masks = self.nonEmptySegmentMasks(segmentationNode, geometry)
            segmentIds = list(masks)
            if not segmentIds:
                raise ValueError("no painted segment: paint the structure on at least one slice first")
        else:
            segmentIds = [segmentIds] if isinstance(segmentIds, str) else list(segmentIds)
            if not segmentIds:
                raise ValueError("the list of segments is empty")
            for segmentId in segmentIds:
                if segmentation.GetSegment(segmentId) is None:
                    raise ValueError(f"segment {segmentId!r} is not in {segmentationNode.GetName()}")
        if len(segmentIds) > 65535:
            raise ValueError("too many segments")

        support = np.zeros(image.shape, np.uint16)
        names = []
        overlap = 0
        for n, segmentId in enumerate(segmentIds, start=1):
            name = segmentation.GetSegment(segmentId).GetName()
            names.append(name)
            mask = masks.pop(segmentId, None)
            if mask is None:
                mask = segmentArrayOnVolumeGrid(segmentationNode, segmentId, geometry).astype(bool)
            if not mask.any():
                raise ValueError(
                    f"segment {name!r} is empty on the grid of {volumeNode.GetName()}: paint it on at "
                    "least one slice of this volume"
                )
            overlap += int(np.count_nonzero(support[mask]))
            support[mask] = n
        if overlap:
            logging.warning(
                "Few-Shot: %d voxels are painted in more than one segment; the later segment is used there", overlap
            )
        return SegmentationJob(
            volumeNodeId=volumeNode.GetID(),
            segmentationNodeId=segmentationNode.GetID(),
            segmentIds=segmentIds,
            segmentNames=names,
            image=image,
            support=support,
            spacing=spacing,
            sliceAxis=axis,
            extent=extent,
            modality=modality,
            fov=fov,
            components=components,
            propagation=propagation,
            overlapVoxels=overlap,
            imageModifiedTime=imageModifiedTime,
            keepAlive=[volumeNode.GetImageData()],
        )

    @staticmethod
    def resolveSliceAxis(sliceAxis, volumeNode=None):
        """None/"auto" -> None; 0/1/2 or "i"/"j"/"k" -> int; a vtkMRMLSliceNode -> the IJK axis of its
        normal (ObliqueViewError for oblique views)."""
        if hasattr(sliceAxis, "GetSliceToRAS"):
            if volumeNode is None:
                raise ValueError("a volume is needed to map a slice view into IJK")
            return sliceAxisFromSliceNode(sliceAxis, volumeNode)
        return binding.parse_slice_axis(sliceAxis)

    # -- step 2: the computation (any thread) --------------------------------------------------------

    def runJob(self, job, weights=None, device="auto", progress=None, cancel=None, useSession=True):
        """Run libdspnet on a prepared job; fills ``job.labels`` and ``job.summary``. No MRML access.

        With ``useSession`` (default) the run goes through the volume's session: slices encoded by an
        earlier run on the same volume (unchanged since) are reused, so a correction re-runs in seconds;
        the result is the same as without a session."""
        options = dict(
            slice_axis=job.sliceAxis,
            extent=job.extent,
            modality=job.modality,
            fov=job.fov,
            components=job.components,
            propagation=job.propagation,
            progress=progress,
            cancel=cancel,
        )
        model = self.getModel(weights, device)
        if useSession and model.library.has_sessions:
            session, job.reusedSession = self.getSession(job, weights, device)
            labels, summary = session.segment(job.support, **options)
        else:
            labels, summary = binding.segment(model, job.image, job.support, job.spacing, **options)
        job.labels = labels
        job.summary = summary
        return job

    @staticmethod
    def sliceCenterRAS(volumeNode, sliceAxis, sliceIndex):
        """RAS position of the centre of slice ``sliceIndex`` along IJK axis ``sliceAxis`` (where to move
        the slice views to show that slice)."""
        import vtk

        dims = volumeNode.GetImageData().GetDimensions()
        ijk = [(d - 1) / 2.0 for d in dims]
        ijk[sliceAxis] = float(sliceIndex)
        m = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(m)
        ras = m.MultiplyPoint(ijk + [1.0])[:3]
        transform = volumeNode.GetParentTransformNode()
        if transform is not None:
            toWorld = vtk.vtkGeneralTransform()
            transform.GetTransformToWorld(toWorld)
            ras = toWorld.TransformPoint(ras)
        return tuple(float(v) for v in ras)

    # -- step 3: arrays -> MRML (main thread) -----------------------------------------------------

    def resultLabelmap(self, job, volumeNode, segmentationNode, labelValue=None):
        """The result as a ``vtkOrientedImageData`` on the volume's grid in the segmentation's frame:
        one segment's 0/1 mask (``labelValue`` = its position + 1), or all labels (None)."""
        import vtk

        image = volumeGeometryInSegmentationFrame(volumeNode, segmentationNode)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR if len(job.segmentIds) < 256 else vtk.VTK_UNSIGNED_SHORT, 1)
        arr = _numpyFromImageData(image)
        if arr.shape != job.labels.shape:
            raise RuntimeError(f"the volume's grid changed during the run ({arr.shape} vs {job.labels.shape})")
        if labelValue is None:
            arr[...] = job.labels
        else:
            arr[...] = job.labels == labelValue
        image.Modified()
        return image

    def writeJobResult(self, job, volumeNode, segmentationNode):
        """Write each result label into its segment (replacing it), on the volume's geometry. Other
        segments are never overwritten: where they overlap, Slicer keeps them in separate layers."""
        import slicer

        if job.labels is None:
            raise ValueError("the job has no result")
        ensureSegmentationConverterRules()
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        voxels = {}
        wasModifying = segmentationNode.StartModify()
        try:
            for n, segmentId in enumerate(job.segmentIds, start=1):
                if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
                    raise ValueError(f"segment {segmentId!r} was removed during the run")
                mask = self.resultLabelmap(job, volumeNode, segmentationNode, labelValue=n)
                if not logic.SetBinaryLabelmapToSegment(
                    mask, segmentationNode, segmentId, logic.MODE_REPLACE, mask.GetExtent()
                ):
                    raise RuntimeError(f"cannot write the result into segment {segmentId!r}")
                voxels[segmentId] = int(np.count_nonzero(job.labels == n))
        finally:
            segmentationNode.EndModify(wasModifying)
        summary = job.summary
        return SegmentResult(
            segmentIds=list(job.segmentIds),
            segmentNames=list(job.segmentNames),
            slicesProcessed=getattr(summary, "slices_processed", None) or 0,
            seconds=getattr(summary, "seconds", None) or 0.0,
            sliceAxis=getattr(summary, "slice_axis", None)
            if getattr(summary, "slice_axis", None) is not None
            else job.sliceAxis,
            voxels=voxels,
            suggestedSlices=list(getattr(summary, "suggested_slices", None) or []),
            sliceConfidence=getattr(summary, "slice_confidence", None),
            reusedSession=job.reusedSession,
        )

    # -- all in one ---------------------------------------------------------------------------

    def segment(
        self,
        volumeNode,
        segmentationNode,
        segmentIds=None,
        sliceAxis=None,
        weights=None,
        device="auto",
        extent="auto",
        progress=None,
        cancel=None,
        modality="auto",
        fov="slice",
        components="support",
        propagation="memory",
        useSession=True,
    ):
        """Propagate the painted segments through the volume and write the result into the same segments.

        - ``segmentIds``: the segments to propagate (default: every non-empty segment). Each must be
          painted on at least one slice; other segments are left untouched.
        - ``sliceAxis``: None (automatic: the axis along which the paint lies on few slices), 0/1/2 or
          "i"/"j"/"k", or a ``vtkMRMLSliceNode`` whose normal is mapped into the volume's IJK axes.
        - ``weights``: a .safetensors file, or None for the default model. ``device``: "auto", "cpu", "cuda".
        - ``extent``: "auto", "all", "A:B" or (A, B) (slice indices along the slice axis, inclusive).
        - ``propagation``: "memory" (default: follow the structure slice by slice from each painted slice;
          with extent "auto" it stops where the structure ends) or "independent" (each slice on its own).
        - ``progress(done, total)``: called after each slice; ``cancel``: Event or callable -> True to stop.
        - ``useSession``: reuse the slices an earlier run on this volume encoded (see :meth:`runJob`).

        Returns a :class:`SegmentResult` (segments written, slices processed, seconds, the slices to check
        next)."""
        t0 = time.perf_counter()
        job = self.prepareJob(
            volumeNode, segmentationNode, segmentIds, sliceAxis, extent, modality, fov, components, propagation
        )
        self.runJob(job, weights=weights, device=device, progress=progress, cancel=cancel, useSession=useSession)
        result = self.writeJobResult(job, volumeNode, segmentationNode)
        if not result.seconds:
            result.seconds = time.perf_counter() - t0
        logging.info("Few-Shot: %s", result)
        return result


# --------------------------------------------------------------------------------------------------
# Background execution (threading only; a GUI polls it with a timer)
# --------------------------------------------------------------------------------------------------


class SegmentationTask:
    """Runs :meth:`FewShotSegmentLogic.runJob` on a worker thread.

    The GUI thread starts it, polls ``finished``/``progress`` (e.g. from a QTimer), may call
    :meth:`cancel`, and writes the result into MRML itself once ``finished`` is True. The worker never
    touches MRML or Qt."""

    def __init__(self, logic, job, weights=None, device="auto"):
        self.logic = logic
        self.job = job
        self.weights = weights
        self.device = device
        self.progress = (0, 0)
        self.error = None
        self.cancelled = False
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._thread = None
        self.startTime = None
        self.seconds = None

    def _onProgress(self, done, total):
        self.progress = (done, total)

    def _run(self):
        try:
            self.logic.runJob(
                self.job, weights=self.weights, device=self.device, progress=self._onProgress, cancel=self._cancel
            )
        except binding.CancelledError:
            self.cancelled = True
        except BaseException as e:  # noqa: BLE001 - reported to the GUI thread
            self.error = e
        finally:
            self.seconds = time.perf_counter() - self.startTime
            self._finished.set()

    def start(self):
        self.startTime = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="FewShotSegment", daemon=True)
        self._thread.start()
        return self

    def cancel(self):
        """Ask the worker to stop at the next slice (the library checks after each slice)."""
        self._cancel.set()

    @property
    def cancelRequested(self):
        return self._cancel.is_set()

    @property
    def finished(self):
        return self._finished.is_set()

    def wait(self, timeout=None):
        return self._finished.wait(timeout)
