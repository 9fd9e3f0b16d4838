#!/usr/bin/env python3
"""Few-shot segmentation of files, without a GUI.

    Slicer --no-splash --no-main-window --python-script batch_segment.py -- \
        --input IMG --support SEG --output OUT [--weights W] [--device auto|cpu|cuda] \
        [--axis auto|i|j|k] [--extent auto|all|A:B] [--segments NAME,NAME]

or, where PyPI's ``slicer-core`` is installed, the same arguments with plain ``python batch_segment.py``.

- IMG: the volume (any format Slicer reads: NRRD, NIfTI, MetaImage, ...).
- SEG: the painted support: a segmentation (``.seg.nrrd``) or a label volume on IMG's grid (each label
  value becomes a segment).
- OUT: ``.seg.nrrd`` (segments, names and colours kept) or a label volume file (``.nrrd``, ``.nii.gz``).
- The support segments are propagated through IMG (all non-empty segments, or those named in
  ``--segments``), exactly as the Few-Shot effect and ``dspnet segment`` do.

Exit status: 0 on success, 1 on any failure (message on stderr), 2 for bad arguments.
"""

import argparse
import os
import sys


def _importLib():
    try:
        import FewShotSegmentLib  # noqa: F401 - installed extension (qt-scripted-modules is on sys.path)
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "FewShotSegment"))
    from FewShotSegmentLib import logic

    return logic


def parseArgs(argv):
    if argv and argv[0] == "--":  # Slicer passes the "--" separator through
        argv = argv[1:]
    p = argparse.ArgumentParser(prog="batch_segment.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="image volume file")
    p.add_argument("--support", required=True, help="painted support: .seg.nrrd or a label volume")
    p.add_argument("--output", required=True, help="output .seg.nrrd or label volume file")
    p.add_argument("--weights", default=None, help="model weights (.safetensors); default: the default model")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--axis", default="auto", choices=["auto", "i", "j", "k"], help="slice axis (default auto)")
    p.add_argument("--extent", default="auto", help="auto, all or A:B (slice indices, inclusive)")
    p.add_argument(
        "--propagation",
        default="memory",
        choices=["memory", "independent"],
        help="memory: follow the structure slice by slice (default); independent: each slice on its own",
    )
    p.add_argument("--segments", default=None, help="comma-separated segment names (default: all painted)")
    p.add_argument("--library", default=None, help="path of libdspnet (default: DSPNET_LIBRARY, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p.parse_args(argv)


def _newScene():
    import slicer

    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:  # slicer-core: no application scene
        scene = slicer.vtkMRMLScene()
    return scene


def loadInputs(scene, args, fslogic):
    import slicer

    fslogic.ensureSegmentationConverterRules()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "FewShotInput")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(args.input)
    if not os.path.isfile(args.input) or not storage.ReadData(volume):
        raise IOError(f"cannot read the image {args.input}")

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "FewShotSegmentation")
    if not os.path.isfile(args.support):
        raise IOError(f"cannot read the support {args.support}: no such file")
    if args.support.lower().endswith(".seg.nrrd"):
        segStorage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        segStorage.SetFileName(args.support)
        if not segStorage.ReadData(segmentation):
            raise IOError(f"cannot read the segmentation {args.support}")
    else:
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "FewShotSupport")
        lmStorage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        lmStorage.SetFileName(args.support)
        if not lmStorage.ReadData(labelmap):
            raise IOError(f"cannot read the label volume {args.support}")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise RuntimeError(f"cannot import the label volume {args.support} as segments")
    segmentIds = None
    if args.segments:
        segmentIds = []
        for name in [n.strip() for n in args.segments.split(",") if n.strip()]:
            segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
            if not segmentId:
                raise ValueError(f"no segment named {name!r} in {args.support}")
            segmentIds.append(segmentId)
    return volume, segmentation, segmentIds


def writeOutput(scene, args, volume, segmentation):
    import slicer
    import vtk

    out = args.output
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if out.lower().endswith(".seg.nrrd"):
        storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        storage.SetFileName(out)
        storage.SetUseCompression(True)
        if not storage.WriteData(segmentation):
            raise IOError(f"cannot write {out}")
        return
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "FewShotOutput")
    ids = vtk.vtkStringArray()
    segmentation.GetSegmentation().GetSegmentIDs(ids)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume):
        raise RuntimeError("cannot export the segments to a label volume")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(out)
    storage.SetUseCompression(True)
    if not storage.WriteData(labelmap):
        raise IOError(f"cannot write {out}")


def main(argv=None):
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    try:
        fslogic = _importLib()
        scene = _newScene()
        volume, segmentation, segmentIds = loadInputs(scene, args, fslogic)
        logic = fslogic.FewShotSegmentLogic(libraryPath=args.library)

        def progress(done, total):
            if not args.quiet:
                print(f"\rslice {done}/{total}", end="", file=sys.stderr, flush=True)

        result = logic.segment(
            volume,
            segmentation,
            segmentIds=segmentIds,
            sliceAxis=None if args.axis == "auto" else args.axis,
            weights=args.weights,
            device=args.device,
            extent=args.extent,
            propagation=args.propagation,
            progress=progress,
        )
        if not args.quiet:
            print(file=sys.stderr)
        writeOutput(scene, args, volume, segmentation)
        if not args.quiet:
            print(f"{result} -> {args.output}", file=sys.stderr)
        return 0
    except Exception as e:  # noqa: BLE001 - one clear line, non-zero status
        print(f"batch_segment: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
