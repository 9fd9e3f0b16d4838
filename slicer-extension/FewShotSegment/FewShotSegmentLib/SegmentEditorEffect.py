"""The "Few-Shot" Segment Editor effect: paint a structure on one slice, preview it through the volume.

An auto-complete effect (Initialize/Update -> preview -> Apply/Cancel), like Slicer's "Grow from seeds":
the inputs are the visible, painted segments; the preview shows each of them propagated through the
source volume by libdspnet; Apply writes the preview into the same segments as one undo step, through
the Segment Editor's own masking (editable area, editable intensity range, overwrite mode).

Unlike the base class, the computation runs off the GUI thread: the main thread reads MRML into arrays
(FewShotSegmentLogic.prepareJob), a worker thread runs libdspnet (FewShotSegmentLogic.runJob via
SegmentationTask; ctypes releases the GIL), and a QTimer polls the task to show progress and, once it
has finished, builds the preview on the main thread. MRML and Qt are only touched on the main thread.

Loaded by the FewShotSegment module with qSlicerSegmentEditorScriptedEffect.setPythonSource().
"""

import os

import ctk
import qt
import vtk

import slicer
from SegmentEditorEffects import *  # noqa: F401,F403 - AbstractScriptedSegmentEditorAutoCompleteEffect
from SegmentEditorEffects.AbstractScriptedSegmentEditorAutoCompleteEffect import ResultPreviewNodeReferenceRole

from FewShotSegmentLib.logic import (
    FewShotSegmentLogic,
    SegmentationTask,
    AXIS_NAMES,
    SETTINGS_DEVICE_KEY,
)
from FewShotSegmentLib.taskui import ERROR_STYLE, TaskMonitor, fillDeviceComboBox, reportError, taskErrorDetails

EFFECT_NAME = "Few-Shot"

_sharedLogic = None


def sharedLogic():
    """One logic (and so one model cache) for every instance of the effect and the module."""
    global _sharedLogic
    if _sharedLogic is None:
        _sharedLogic = FewShotSegmentLogic()
    return _sharedLogic


class SegmentEditorEffect(AbstractScriptedSegmentEditorAutoCompleteEffect):
    """Few-shot propagation of painted slices with libdspnet."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = EFFECT_NAME
        AbstractScriptedSegmentEditorAutoCompleteEffect.__init__(self, scriptedEffect)
        self.minimumNumberOfSegments = 1
        self.minimumNumberOfSegmentsWithEditableArea = 1
        self.monitor = TaskMonitor(self._onTaskFinished, progressFormat="slice %v of %m")

    @property
    def task(self):
        """The running propagation, or None."""
        return self.monitor.task

    @property
    def pollTimer(self):
        return self.monitor.timer

    def onPollTask(self):
        """What the poll timer calls (main thread)."""
        self.monitor.poll()

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return """<html>Segment a structure through the whole volume from one painted slice (few-shot, DSPNet).<br>
<p>1. Paint the structure on one slice (or a few slices) with Paint or Draw, in an axial, sagittal or coronal
view aligned with the volume. Several segments can be painted; each is propagated.
<p>2. Click <b>Initialize</b>: the propagation runs in the background (progress below, <b>Stop</b> to cancel)
and shows a preview. Correct the paint and click <b>Update</b> to run again.
<p>3. <b>Apply</b> writes the preview into the painted segments (one undo step), within the editable area and
following the overwrite mode set in the Masking section; <b>Cancel</b> discards it.
<p><b>Slice axis</b>: Auto takes the axis along which the paint lies on few slices; choosing a view takes the
axis of that view's normal (oblique views are refused: use "Rotate to volume plane").
<b>Extent</b>: auto (until the structure vanishes), all slices, or a range of slice indices.
<b>Propagation</b>: Follow (default) tracks the structure slice by slice from each painted slice and stops
where it ends; Independent matches every slice on its own against the nearest painted slice.
Weights and device defaults are set in the Few-Shot Segment module.</html>"""

    # -- options ------------------------------------------------------------------------------

    def setupOptionsFrame(self):
        self.sliceViewComboBox = qt.QComboBox()
        self.sliceViewComboBox.setToolTip(
            "Axis along which the paint is propagated: Auto, or the axis a slice view "
            "looks along (mapped into the volume's IJK axes)."
        )
        self.scriptedEffect.addLabeledOptionsWidget("Slice axis:", self.sliceViewComboBox)

        self.extentComboBox = qt.QComboBox()
        self.extentComboBox.addItem("Auto (until the structure vanishes)", "auto")
        self.extentComboBox.addItem("All slices", "all")
        self.extentComboBox.addItem("Slice range", "range")
        self.extentFirstSpinBox = qt.QSpinBox()
        self.extentFirstSpinBox.setRange(0, 100000)
        self.extentFirstSpinBox.setToolTip("First slice index (0-based, along the slice axis)")
        self.extentLastSpinBox = qt.QSpinBox()
        self.extentLastSpinBox.setRange(0, 100000)
        self.extentLastSpinBox.setToolTip("Last slice index (inclusive)")
        extentLayout = qt.QHBoxLayout()
        extentLayout.addWidget(self.extentComboBox)
        extentLayout.addWidget(self.extentFirstSpinBox)
        extentLayout.addWidget(qt.QLabel("to"))
        extentLayout.addWidget(self.extentLastSpinBox)
        self.scriptedEffect.addLabeledOptionsWidget("Extent:", extentLayout)

        self.propagationComboBox = qt.QComboBox()
        self.propagationComboBox.addItem("Follow the structure (memory)", "memory")
        self.propagationComboBox.addItem("Each slice independently", "independent")
        self.propagationComboBox.setToolTip(
            "Follow: slice by slice from each painted slice, each slice matched against "
            "the painted slice and the latest results, stopping where the structure "
            "ends. Independent: every slice matched on its own (the paper's protocol)."
        )
        self.scriptedEffect.addLabeledOptionsWidget("Propagation:", self.propagationComboBox)

        self.deviceComboBox = qt.QComboBox()
        fillDeviceComboBox(self.deviceComboBox)
        self.deviceComboBox.setToolTip("Where the model runs; CUDA needs the CUDA build of libdspnet.")
        self.weightsPathLineEdit = ctk.ctkPathLineEdit()
        self.weightsPathLineEdit.filters = ctk.ctkPathLineEdit.Files
        self.weightsPathLineEdit.nameFilters = ["Model weights (*.safetensors)"]
        self.weightsPathLineEdit.setToolTip(
            "Model weights; empty = the default model set in the Few-Shot Segment module"
        )
        self.scriptedEffect.addLabeledOptionsWidget("Device:", self.deviceComboBox)
        self.scriptedEffect.addLabeledOptionsWidget("Weights:", self.weightsPathLineEdit)

        # Initialize/Update, preview display, Cancel/Apply (base class).
        AbstractScriptedSegmentEditorAutoCompleteEffect.setupOptionsFrame(self)

        self.progressBar = qt.QProgressBar()
        self.stopButton = qt.QPushButton("Stop")
        self.stopButton.setToolTip("Stop the running propagation (it stops after the current slice)")
        self.monitor.setWidgets(self.progressBar, self.stopButton)
        progressLayout = qt.QHBoxLayout()
        progressLayout.addWidget(self.progressBar)
        progressLayout.addWidget(self.stopButton)
        self.scriptedEffect.addOptionsWidget(progressLayout)
        self.statusLabel = qt.QLabel()
        self.statusLabel.setWordWrap(True)
        self.statusLabel.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self.suggestionButton = qt.QPushButton("Show the least confident slice")
        self.suggestionButton.setToolTip(
            "Move the slice views to the slices the model is least sure of (inside the "
            "result, away from the painted slices); each click shows the next one. "
            "Correct the result there and press Update: the run reuses the slices "
            "already encoded and takes seconds."
        )
        self.suggestionButton.setVisible(False)
        self.scriptedEffect.addOptionsWidget(self.suggestionButton)
        self.suggestions = None  # (volume node ID, slice axis, [slices]) of the last preview
        self.suggestionIndex = 0
        self.suggestionButton.connect("clicked()", self.onShowSuggestion)

        self.stopButton.connect("clicked()", self.onStop)
        self.sliceViewComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.extentComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.extentFirstSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)
        self.extentLastSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)
        self.propagationComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.deviceComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.weightsPathLineEdit.connect("currentPathChanged(QString)", self.updateMRMLFromGUI)

    def _fillSliceViews(self):
        current = (
            self.scriptedEffect.parameter("SliceView") if self.scriptedEffect.parameterDefined("SliceView") else "auto"
        )
        wasBlocked = self.sliceViewComboBox.blockSignals(True)
        self.sliceViewComboBox.clear()
        self.sliceViewComboBox.addItem("Auto (from the painted slices)", "auto")
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            for name in layoutManager.sliceViewNames():
                self.sliceViewComboBox.addItem(f"{name} view", name)
        index = self.sliceViewComboBox.findData(current)
        self.sliceViewComboBox.setCurrentIndex(index if index >= 0 else 0)
        self.sliceViewComboBox.blockSignals(wasBlocked)

    def setMRMLDefaults(self):
        # Not the base's AutoUpdate=1: a propagation takes seconds, so it runs when asked.
        self.scriptedEffect.setParameterDefault("AutoUpdate", "0")
        self.scriptedEffect.setParameterDefault("SliceView", "auto")
        self.scriptedEffect.setParameterDefault("Extent", "auto")
        self.scriptedEffect.setParameterDefault("ExtentFirst", "0")
        self.scriptedEffect.setParameterDefault("ExtentLast", "0")
        self.scriptedEffect.setParameterDefault("Propagation", "memory")
        device = slicer.app.userSettings().value(SETTINGS_DEVICE_KEY, "auto") or "auto"
        self.scriptedEffect.setParameterDefault("Device", device)
        self.scriptedEffect.setParameterDefault("Weights", "")

    def updateGUIFromMRML(self):
        AbstractScriptedSegmentEditorAutoCompleteEffect.updateGUIFromMRML(self)
        self._fillSliceViews()
        widgets = [
            self.extentComboBox,
            self.extentFirstSpinBox,
            self.extentLastSpinBox,
            self.propagationComboBox,
            self.deviceComboBox,
            self.weightsPathLineEdit,
        ]
        blocked = [w.blockSignals(True) for w in widgets]
        extent = self.scriptedEffect.parameter("Extent")
        self.extentComboBox.setCurrentIndex(max(0, self.extentComboBox.findData(extent)))
        self.extentFirstSpinBox.value = self.scriptedEffect.integerParameter("ExtentFirst")
        self.extentLastSpinBox.value = self.scriptedEffect.integerParameter("ExtentLast")
        self.extentFirstSpinBox.setEnabled(extent == "range")
        self.extentLastSpinBox.setEnabled(extent == "range")
        self.propagationComboBox.setCurrentIndex(max(0, self.propagationComboBox.findData(self._propagation())))
        self.deviceComboBox.setCurrentIndex(
            max(0, self.deviceComboBox.findData(self.scriptedEffect.parameter("Device")))
        )
        self.weightsPathLineEdit.currentPath = self.scriptedEffect.parameter("Weights")
        for w, b in zip(widgets, blocked):
            w.blockSignals(b)
        self._disableBaseButtonsWhileRunning(self.task is not None)

    def updateMRMLFromGUI(self):
        AbstractScriptedSegmentEditorAutoCompleteEffect.updateMRMLFromGUI(self)
        self.scriptedEffect.setParameter("SliceView", self.sliceViewComboBox.currentData or "auto")
        extent = self.extentComboBox.currentData or "auto"
        self.scriptedEffect.setParameter("Extent", extent)
        self.scriptedEffect.setParameter("ExtentFirst", self.extentFirstSpinBox.value)
        self.scriptedEffect.setParameter("ExtentLast", self.extentLastSpinBox.value)
        self.extentFirstSpinBox.setEnabled(extent == "range")
        self.extentLastSpinBox.setEnabled(extent == "range")
        self.scriptedEffect.setParameter("Propagation", self.propagationComboBox.currentData or "memory")
        self.scriptedEffect.setParameter("Device", self.deviceComboBox.currentData or "auto")
        self.scriptedEffect.setParameter("Weights", self.weightsPathLineEdit.currentPath)

    # -- inputs -------------------------------------------------------------------------------

    def _sourceVolumeNode(self):
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        getter = getattr(parameterSetNode, "GetSourceVolumeNode", None) or parameterSetNode.GetMasterVolumeNode
        return getter()

    def _extent(self):
        extent = self.scriptedEffect.parameter("Extent")
        if extent == "range":
            first = self.scriptedEffect.integerParameter("ExtentFirst")
            last = self.scriptedEffect.integerParameter("ExtentLast")
            if last < first:
                raise ValueError(
                    f"the slice range {first} to {last} is empty: the last slice must not precede the first"
                )
            return (first, last)
        return extent if extent in ("auto", "all") else "auto"

    def _propagation(self):
        value = (
            self.scriptedEffect.parameter("Propagation") if self.scriptedEffect.parameterDefined("Propagation") else ""
        )
        return value if value in ("memory", "independent") else "memory"

    def _sliceAxis(self, volumeNode):
        view = self.scriptedEffect.parameter("SliceView")
        if not view or view == "auto":
            return None
        sliceWidget = slicer.app.layoutManager().sliceWidget(view)
        if sliceWidget is None:
            raise ValueError(f"the {view} view is not in the current layout; choose another view or Auto")
        return sliceWidget.mrmlSliceNode()

    def _inputSegmentIds(self, segmentationNode, volumeNode):
        """Visible segments that hold paint, in the segmentation's order."""
        visible = vtk.vtkStringArray()
        segmentationNode.GetDisplayNode().GetVisibleSegmentIDs(visible)
        visibleIds = {visible.GetValue(i) for i in range(visible.GetNumberOfValues())}
        from FewShotSegmentLib.logic import volumeGeometryInSegmentationFrame

        geometry = volumeGeometryInSegmentationFrame(volumeNode, segmentationNode)
        painted = FewShotSegmentLogic.nonEmptySegmentIds(segmentationNode, geometry)
        return [s for s in painted if s in visibleIds]

    # -- running ------------------------------------------------------------------------------

    def onPreview(self):
        """Initialize/Update (and auto-update): start a background run. Never blocks the GUI."""
        if self.task is not None or self._baseBusy():
            return
        self._setBaseBusy(True)
        try:
            segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
            volumeNode = self._sourceVolumeNode()
            if segmentationNode is None or volumeNode is None:
                raise ValueError("select a segmentation and its source volume first")
            segmentIds = self._inputSegmentIds(segmentationNode, volumeNode)
            if not segmentIds:
                raise ValueError("paint the structure on at least one slice of a visible segment first")
            logic = sharedLogic()
            logic.library()  # a missing library is reported here, before any work
            with slicer.util.WaitCursor():
                job = logic.prepareJob(
                    volumeNode,
                    segmentationNode,
                    segmentIds,
                    sliceAxis=self._sliceAxis(volumeNode),
                    extent=self._extent(),
                    propagation=self._propagation(),
                )
            weights = self.scriptedEffect.parameter("Weights") or None
            device = self.scriptedEffect.parameter("Device") or "auto"
            self.monitor.start(SegmentationTask(logic, job, weights=weights, device=device).start())
            self._setStatus(f"Propagating {', '.join(job.segmentNames)}...")
            self.updateGUIFromMRML()
        except Exception as e:
            self._setBaseBusy(False)
            self._reportError(e)

    def _onTaskFinished(self, task):
        """The monitor's callback once the worker has finished (main thread)."""
        self._setBaseBusy(False)
        try:
            if task.cancelled:
                self._setStatus("Stopped: the preview was not changed.")
            elif task.error is not None:
                self._reportError(task.error, taskErrorDetails(task.error))
            else:
                self._showPreview(task.job)
                s = task.job.summary
                suggested = list(getattr(s, "suggested_slices", None) or [])
                self.suggestions = (task.job.volumeNodeId, s.slice_axis, suggested) if suggested else None
                self.suggestionIndex = 0
                self.suggestionButton.setVisible(bool(suggested))
                check = f" Least confident slices: {', '.join(str(z) for z in suggested)}." if suggested else ""
                reused = " (slices reused from the previous run)" if task.job.reusedSession else ""
                self._setStatus(
                    f"Preview of {', '.join(task.job.segmentNames)}: {s.slices_processed} slices along "
                    f"{AXIS_NAMES[s.slice_axis] if s.slice_axis in (0, 1, 2) else '?'} in {task.seconds:.1f} s"
                    f"{reused}.{check} Apply to keep it, Cancel to discard it."
                )
        except Exception as e:
            self._reportError(e)
        finally:
            self.updateGUIFromMRML()

    def onShowSuggestion(self):
        """Move every slice view to the next suggested slice of the last preview."""
        if not self.suggestions:
            return
        volumeNodeId, axis, slices = self.suggestions
        volumeNode = slicer.mrmlScene.GetNodeByID(volumeNodeId)
        if volumeNode is None or axis not in (0, 1, 2):
            self.suggestionButton.setVisible(False)
            return
        z = slices[self.suggestionIndex % len(slices)]
        self.suggestionIndex += 1
        ras = FewShotSegmentLogic.sliceCenterRAS(volumeNode, axis, z)
        for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
            sliceNode.JumpSliceByOffsetting(*ras)
        self.suggestionButton.setText(
            f"Show the least confident slice (now {AXIS_NAMES[axis]} = {z}; "
            f"{self.suggestionIndex % len(slices) + 1} of {len(slices)} next)"
        )

    def onStop(self):
        if self.monitor.stop():
            self._setStatus("Stopping after the current slice...")

    def _showPreview(self, job):
        """Build (or refresh) the preview segmentation from a finished job. Main thread."""
        import vtkSegmentationCorePython as vtkSegmentationCore

        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        volumeNode = slicer.mrmlScene.GetNodeByID(job.volumeNodeId)
        if segmentationNode is None or volumeNode is None or segmentationNode.GetID() != job.segmentationNodeId:
            raise RuntimeError("the segmentation or the volume changed while the propagation ran; run it again")
        previewNode = self.getPreviewNode()
        opacity = self.getPreviewOpacity()
        show3D = self.getPreviewShow3D()
        if previewNode is None:
            previewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
            previewNode.CreateDefaultDisplayNodes()
            previewNode.GetDisplayNode().SetVisibility2DOutline(False)
            if segmentationNode.GetParentTransformNode():
                previewNode.SetAndObserveTransformNodeID(segmentationNode.GetParentTransformNode().GetID())
            self._registerPreviewNode(previewNode)
            previewNode.GetSegmentation().SetConversionParameter(
                slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule.GetSmoothingFactorParameterName(), "-0.5"
            )
        previewNode.SetName(segmentationNode.GetName() + " preview")
        previewNode.RemoveClosedSurfaceRepresentation()
        labelmap = sharedLogic().resultLabelmap(job, volumeNode, segmentationNode)
        previewSegmentation = previewNode.GetSegmentation()
        previewSegmentation.RemoveAllSegments()
        labelmapName = vtkSegmentationCore.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        selected = vtk.vtkStringArray()
        for index, segmentId in enumerate(job.segmentIds):
            inputSegment = segmentationNode.GetSegmentation().GetSegment(segmentId)
            if inputSegment is None:
                continue
            segment = vtkSegmentationCore.vtkSegment()
            segment.SetName(inputSegment.GetName())
            segment.SetColor(inputSegment.GetColor())
            previewSegmentation.AddSegment(segment, segmentId)
            segment.AddRepresentation(labelmapName, labelmap)
            segment.SetLabelValue(index + 1)
            selected.InsertNextValue(segmentId)
        self._setObservedSegments(segmentationNode, selected, labelmapName)
        self.setPreviewOpacity(opacity)
        self.setPreviewShow3D(show3D)

    def onApply(self):
        if self.task is not None:
            self._setStatus("Wait for the propagation to finish (or Stop it) before applying.")
            return
        if self.getPreviewNode() is None:
            return
        # Base class: saveStateForUndo() once, then each preview segment replaces its input segment through
        # modifySegmentByLabelmap(ModificationModeSet), which applies the editable area, the intensity mask
        # and the overwrite mode.
        with slicer.util.tryWithErrorDisplay("Few-Shot: applying the preview failed:", waitCursor=True):
            AbstractScriptedSegmentEditorAutoCompleteEffect.onApply(self)
            self._setStatus("Applied.")

    def reset(self):
        self._cancelTask()
        AbstractScriptedSegmentEditorAutoCompleteEffect.reset(self)

    def deactivate(self):
        self._cancelTask()
        baseDeactivate = getattr(AbstractScriptedSegmentEditorAutoCompleteEffect, "deactivate", None)
        if baseDeactivate is not None:
            baseDeactivate(self)

    def cleanup(self):
        self._cancelTask()
        self.monitor.close()
        AbstractScriptedSegmentEditorAutoCompleteEffect.cleanup(self)

    def _cancelTask(self):
        self.monitor.abandon()  # the worker stops at the next slice; its result is dropped
        self._setBaseBusy(False)

    # -- messages -----------------------------------------------------------------------------

    def _setStatus(self, text, error=False):
        if hasattr(self, "statusLabel"):
            self.statusLabel.setStyleSheet(ERROR_STYLE if error else "")
            self.statusLabel.setText(text)
        slicer.util.showStatusMessage(text.split("\n")[0], 5000)

    def _reportError(self, error, details=None):
        reportError(error, self._setStatus, details)

    # -- the base class's internals, in one place ----------------------------------------------
    # AbstractScriptedSegmentEditorAutoCompleteEffect (Slicer's SegmentEditorEffects) computes its preview
    # on the GUI thread and has no API for an effect that computes on a worker thread and builds the
    # preview itself. These methods are the only places that touch its attributes (Slicer 5.x names):
    # `previewComputationInProgress` (its re-entry guard), `previewButton` / `applyButton` (its
    # Initialize/Apply buttons), the preview node reference `ResultPreviewNodeReferenceRole` with the
    # common parameter "SegmentationResultPreviewOwnerEffect" (how it finds and owns the preview), and
    # `selectedSegmentIds` / `selectedSegmentModifiedTimes` (what its auto-update observes). A Slicer
    # release that renames them breaks here first; FewShotSegmentTest runs the effect on the real base.

    def _baseBusy(self):
        return self.previewComputationInProgress

    def _setBaseBusy(self, busy):
        self.previewComputationInProgress = busy

    def _disableBaseButtonsWhileRunning(self, running):
        self.previewButton.setEnabled(not running)
        if running:
            self.applyButton.setEnabled(False)

    def _registerPreviewNode(self, previewNode):
        self.scriptedEffect.setCommonNodeReference(ResultPreviewNodeReferenceRole, previewNode)
        self.scriptedEffect.setCommonParameter("SegmentationResultPreviewOwnerEffect", self.scriptedEffect.name)

    def _setObservedSegments(self, segmentationNode, selected, labelmapName):
        """The input segments the preview was made from, with their modification times."""
        self.selectedSegmentIds = selected
        self.selectedSegmentModifiedTimes = {}
        for i in range(selected.GetNumberOfValues()):
            segment = segmentationNode.GetSegmentation().GetSegment(selected.GetValue(i))
            representation = segment.GetRepresentation(labelmapName)
            if representation:
                self.selectedSegmentModifiedTimes[selected.GetValue(i)] = representation.GetMTime()
