"""The Few-Shot effect's own code (SegmentEditorEffect.py) driven without Qt.

Real Slicer cannot run here, so Qt, CTK and the Segment Editor base class are replaced by small fakes
that record what the effect does; MRML is real (slicer-core). What is checked is the effect's flow:
inputs read on the calling thread, libdspnet on a worker thread polled by the timer callback, the
preview segmentation built from the result, Apply through the base class into the painted segment,
Stop, and errors shown to the user rather than raised. FewShotSegmentTest checks the same inside Slicer
with the real base class."""

import importlib
import os
import sys
import time
import types

import pytest

from FewShotSegmentLib import testing

MODULE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


# --------------------------------------------------------------------------------------------------
# Fakes
# --------------------------------------------------------------------------------------------------


class FakeWidget:
    def __init__(self, *args, **kwargs):
        self.enabled = True
        self.visible = True
        self.text = args[0] if args and isinstance(args[0], str) else ""
        self.value = 0
        self.style = ""

    def connect(self, signal, slot):
        pass

    def disconnect(self, signal, slot):
        pass

    def blockSignals(self, block):
        return False

    def setEnabled(self, v):
        self.enabled = bool(v)

    def setVisible(self, v):
        self.visible = bool(v)

    def setText(self, t):
        self.text = t

    def setValue(self, v):
        self.value = v

    def setStyleSheet(self, s):
        self.style = s

    def __getattr__(self, name):  # setToolTip, setRange, setWordWrap, addWidget, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: None


class FakeComboBox(FakeWidget):
    def __init__(self, *args):
        super().__init__()
        self.items = []
        self.index = -1

    def addItem(self, label, data=None):
        self.items.append((label, data))
        if self.index < 0:
            self.index = 0

    def clear(self):
        self.items, self.index = [], -1

    def findData(self, data):
        for i, (_, d) in enumerate(self.items):
            if d == data:
                return i
        return -1

    def setCurrentIndex(self, i):
        self.index = i

    @property
    def currentData(self):
        return self.items[self.index][1] if 0 <= self.index < len(self.items) else None


class FakeTimer(FakeWidget):
    def __init__(self):
        super().__init__()
        self.active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


class FakeScriptedEffect:
    """qSlicerSegmentEditorScriptedEffect: parameters, options widgets, the parameter set node."""

    def __init__(self, parameterSetNode):
        self.name = ""
        self.params = {}
        self.common = {}
        self.refs = {}
        self.undoStates = 0
        self._parameterSetNode = parameterSetNode

    def parameterSetNode(self):
        return self._parameterSetNode

    def setParameterDefault(self, name, value):
        self.params.setdefault(name, str(value))

    def setParameter(self, name, value):
        self.params[name] = str(value)

    def parameter(self, name):
        return self.params.get(name, "")

    def parameterDefined(self, name):
        return name in self.params

    def integerParameter(self, name):
        return int(self.params.get(name, "0") or 0)

    def setCommonParameter(self, name, value):
        self.common[name] = value

    def setCommonNodeReference(self, role, node):
        self.refs[role] = node

    def nodeReference(self, role):
        return self.refs.get(role)

    def addLabeledOptionsWidget(self, label, widget):
        pass

    def addOptionsWidget(self, widget):
        pass

    def saveStateForUndo(self):
        self.undoStates += 1


class FakeParameterSetNode:
    def __init__(self, segmentationNode, volumeNode):
        self.segmentationNode, self.volumeNode = segmentationNode, volumeNode

    def GetSegmentationNode(self):
        return self.segmentationNode

    def GetSourceVolumeNode(self):
        return self.volumeNode


def makeFakeBase(slicer):
    class AbstractScriptedSegmentEditorAutoCompleteEffect:
        """The parts of Slicer's base class the effect relies on (same names and roles)."""

        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect
            self.selectedSegmentIds = None
            self.selectedSegmentModifiedTimes = {}
            self.previewComputationInProgress = False
            self.opacity = 0.6

        def setupOptionsFrame(self):
            self.previewButton = FakeWidget("Initialize")
            self.applyButton = FakeWidget("Apply")
            self.cancelButton = FakeWidget("Cancel")
            self.autoUpdateCheckBox = FakeWidget()

        def updateGUIFromMRML(self):
            self.applyButton.setEnabled(self.getPreviewNode() is not None)

        def updateMRMLFromGUI(self):
            pass

        def getPreviewNode(self):
            return self.scriptedEffect.nodeReference("SegmentationResultPreview")

        def getPreviewOpacity(self):
            return self.opacity

        def setPreviewOpacity(self, opacity):
            self.opacity = opacity

        def getPreviewShow3D(self):
            return False

        def setPreviewShow3D(self, show):
            pass

        def reset(self):
            preview = self.getPreviewNode()
            if preview is not None:
                self.scriptedEffect.setCommonNodeReference("SegmentationResultPreview", None)
                slicer.mrmlScene.RemoveNode(preview)
            self.selectedSegmentIds = None

        def onApply(self):
            # Slicer: saveStateForUndo(), then modifySegmentByLabelmap(..., ModificationModeSet) per segment.
            segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
            previewNode = self.getPreviewNode()
            self.scriptedEffect.saveStateForUndo()
            seg = previewNode.GetSegmentation()
            logic = slicer.vtkSlicerSegmentationsModuleLogic
            for n in range(seg.GetNumberOfSegments()):
                segmentId = seg.GetNthSegmentID(n)
                labelmap = slicer.vtkOrientedImageData()
                previewNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
                assert logic.SetBinaryLabelmapToSegment(
                    labelmap, segmentationNode, segmentId, logic.MODE_REPLACE, labelmap.GetExtent()
                )
            self.reset()

        def cleanup(self):
            pass

    return AbstractScriptedSegmentEditorAutoCompleteEffect


@pytest.fixture
def effectEnv(ct, monkeypatch):
    """The effect module imported against fakes, on a fresh scene with the CT support painted."""
    import slicer

    scene = testing.newScene()
    volume = testing.loadVolume(scene, ct["files"]["image"], name="ct")
    seg = testing.loadSegmentation(scene, ct["files"]["support"], name="ct-effect")
    seg.CreateDefaultDisplayNodes()

    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    qt.QComboBox = FakeComboBox
    for name in ("QSpinBox", "QLabel", "QProgressBar", "QPushButton", "QHBoxLayout", "QIcon", "QCheckBox"):
        setattr(qt, name, FakeWidget)
    qt.Qt = types.SimpleNamespace(TextSelectableByMouse=1)
    ctk = types.ModuleType("ctk")
    ctk.ctkPathLineEdit = type("ctkPathLineEdit", (FakeWidget,), {"Files": 1, "currentPath": ""})
    base = makeFakeBase(slicer)
    see = types.ModuleType("SegmentEditorEffects")
    see.AbstractScriptedSegmentEditorAutoCompleteEffect = base
    see.__all__ = ["AbstractScriptedSegmentEditorAutoCompleteEffect"]
    seeSub = types.ModuleType("SegmentEditorEffects.AbstractScriptedSegmentEditorAutoCompleteEffect")
    seeSub.ResultPreviewNodeReferenceRole = "SegmentationResultPreview"
    for name, module in (
        ("qt", qt),
        ("ctk", ctk),
        ("SegmentEditorEffects", see),
        ("SegmentEditorEffects.AbstractScriptedSegmentEditorAutoCompleteEffect", seeSub),
        ("vtkSegmentationCorePython", slicer),
    ):
        monkeypatch.setitem(sys.modules, name, module)

    messages = {"errors": [], "status": []}
    settings = {}
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(
        slicer,
        "app",
        types.SimpleNamespace(
            layoutManager=lambda: None,
            userSettings=lambda: types.SimpleNamespace(value=lambda k, d=None: settings.get(k, d)),
        ),
        raising=False,
    )
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: messages["errors"].append(text))
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, *a: messages["status"].append(text))

    class WaitCursor:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(slicer.util, "WaitCursor", WaitCursor)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *a, **k: WaitCursor())

    sys.modules.pop("FewShotSegmentLib.SegmentEditorEffect", None)
    module = importlib.import_module("FewShotSegmentLib.SegmentEditorEffect")
    scripted = FakeScriptedEffect(FakeParameterSetNode(seg, volume))
    effect = module.SegmentEditorEffect(scripted)
    effect.setupOptionsFrame()
    effect.setMRMLDefaults()
    effect.updateGUIFromMRML()
    yield types.SimpleNamespace(
        effect=effect, scripted=scripted, volume=volume, seg=seg, scene=scene, messages=messages, module=module
    )
    effect.cleanup()
    sys.modules.pop("FewShotSegmentLib.SegmentEditorEffect", None)


def waitForTask(effect, timeout=300):
    deadline = time.time() + timeout
    while effect.task is not None and time.time() < deadline:
        effect.onPollTask()  # what the QTimer does on the GUI thread
        time.sleep(0.05)
    assert effect.task is None, "the task did not finish"


# --------------------------------------------------------------------------------------------------


def test_effect_preview_then_apply_matches_cli(effectEnv, ct, weights):
    e, s = effectEnv.effect, effectEnv.scripted
    assert s.name == "Few-Shot"
    assert s.parameter("AutoUpdate") == "0"
    s.setParameter("Extent", "range")
    s.setParameter("ExtentFirst", testing.CT_EXTENT[0])
    s.setParameter("ExtentLast", testing.CT_EXTENT[1])
    s.setParameter("Device", "cpu")
    s.setParameter("Weights", weights)
    e.onPreview()
    assert e.task is not None, effectEnv.messages
    assert e.pollTimer.active and e.progressBar.visible and e.stopButton.visible
    assert not e.previewButton.enabled, "Initialize must be disabled while running"
    waitForTask(e)
    assert not effectEnv.messages["errors"], effectEnv.messages["errors"]
    assert "Preview of Liver: 3 slices along k" in e.statusLabel.text
    preview = e.getPreviewNode()
    assert preview is not None and preview.GetSegmentation().GetNumberOfSegments() == 1
    liverId = effectEnv.seg.GetSegmentation().GetSegmentIdBySegmentName("Liver")
    assert e.selectedSegmentIds.GetValue(0) == liverId
    testing.assertSameMask(
        testing.segmentArray(preview, liverId, effectEnv.volume), ct["cli"] == 1, "effect preview vs dspnet segment"
    )
    # The least confident slices are named, and the button moves the views onto the first of them.
    suggested = e.suggestions[2]
    assert e.suggestionButton.visible and suggested and set(suggested) <= {1, 2, 4}
    assert f"Least confident slices: {', '.join(str(z) for z in suggested)}" in e.statusLabel.text
    red = testing.sliceNode(effectEnv.scene, "Red", "Axial")
    e.onShowSuggestion()
    volume = effectEnv.volume
    import vtk

    rasToIjk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(rasToIjk)
    origin = [red.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
    assert abs(rasToIjk.MultiplyPoint(origin + [1.0])[2] - suggested[0]) < 1e-6, "the Red view is not on the slice"
    # Update again (e.g. after a correction): the volume's session is reused.
    e.onPreview()
    waitForTask(e)
    assert "slices reused from the previous run" in e.statusLabel.text, e.statusLabel.text
    e.onApply()
    assert s.undoStates == 1 and e.getPreviewNode() is None
    testing.assertSameMask(
        testing.segmentArray(effectEnv.seg, liverId, effectEnv.volume), ct["cli"] == 1, "effect Apply vs dspnet segment"
    )


def test_effect_stop_keeps_everything(effectEnv, weights):
    e, s = effectEnv.effect, effectEnv.scripted
    s.setParameter("Extent", "all")
    s.setParameter("Device", "cpu")
    s.setParameter("Weights", weights)
    before = testing.segmentArray(effectEnv.seg, effectEnv.seg.GetSegmentation().GetNthSegmentID(0), effectEnv.volume)
    e.onPreview()
    e.onStop()
    waitForTask(e)
    assert e.getPreviewNode() is None
    assert e.statusLabel.text.startswith("Stopped")
    assert not effectEnv.messages["errors"]
    after = testing.segmentArray(effectEnv.seg, effectEnv.seg.GetSegmentation().GetNthSegmentID(0), effectEnv.volume)
    assert (before == after).all()
    e.onApply()  # nothing to apply: no error
    assert effectEnv.scripted.undoStates == 0


def test_effect_reports_errors_in_the_ui(effectEnv, tmp_path):
    e, s = effectEnv.effect, effectEnv.scripted
    s.setParameter("Device", "cpu")
    s.setParameter("Weights", str(tmp_path / "missing.safetensors"))
    e.onPreview()
    waitForTask(e)
    assert len(effectEnv.messages["errors"]) == 1
    assert "missing.safetensors" in effectEnv.messages["errors"][0]
    assert "DSPNET_ERROR_IO" in e.statusLabel.text and e.statusLabel.style
    # Errors found before any work (bad slice range) are reported the same way.
    s.setParameter("Extent", "range")
    s.setParameter("ExtentFirst", 4)
    s.setParameter("ExtentLast", 2)
    e.onPreview()
    assert e.task is None and "slice range 4 to 2 is empty" in effectEnv.messages["errors"][-1]
    # Nothing painted and visible.
    effectEnv.seg.GetDisplayNode().SetAllSegmentsVisibility(False)
    s.setParameter("Extent", "auto")
    e.onPreview()
    assert "paint the structure" in effectEnv.messages["errors"][-1]


def test_in_slicer_self_test_never_passes_silently_without_prerequisites(monkeypatch):
    """FewShotSegmentTest.runTest with the demo data or the dspnet tool missing: a visible skip
    (unittest.SkipTest, which a direct call surfaces as an error), never a silent return."""
    import unittest
    import slicer

    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    class FakeTest(unittest.TestCase):
        shown = []

        def delayDisplay(self, message, msec=0):
            self.shown.append(message)

    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleLogic = slm.ScriptedLoadableModuleWidget = Base
    slm.ScriptedLoadableModuleTest = FakeTest
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", slm, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", testing.newScene(), raising=False)
    monkeypatch.syspath_prepend(MODULE_DIR)
    sys.modules.pop("FewShotSegment", None)
    module = importlib.import_module("FewShotSegment")
    monkeypatch.setattr(testing, "missingPrerequisites", lambda: "the dspnet tool (set DSPNET_CLI)")
    test = module.FewShotSegmentTest("runTest")
    with pytest.raises(unittest.SkipTest, match="the dspnet tool"):
        test.runTest()
    assert any("skipped" in m and "the dspnet tool" in m for m in FakeTest.shown), FakeTest.shown
    # Run by a unittest runner, it is reported as a skip, not a pass.
    result = unittest.TestResult()
    module.FewShotSegmentTest("runTest").run(result)
    assert len(result.skipped) == 1 and result.wasSuccessful() and result.testsRun == 1
    sys.modules.pop("FewShotSegment", None)
