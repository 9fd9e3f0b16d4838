"""Segment MITK images and multi-label segmentations (PyPI ``mitk-python``, the real MITK runtime).

    import mitk, dspnet.mitk
    image = mitk.Image.load("ct.nrrd")
    painted = mitk.MultiLabelSegmentation.load("painted.nrrd")   # labels painted on some slices
    result = dspnet.mitk.segment(image, painted)                  # every painted label through the volume
    result.save("result.nrrd")                                    # MITK's multi-label segmentation format

or from a shell: ``python -m dspnet.mitk IMAGE SEGMENTATION -o OUT [--weights W]``.

The result is a deep copy of the input segmentation (every group, every label's value, name, colour and
properties) on the image's geometry, related to the source image as MITK's own constructor relates a new
segmentation; in each group the chosen labels are segmented through the volume (their painted voxels
kept) and every other label is left exactly as it was. The engine works on the voxel grid: MITK's
``(z, y, x)`` arrays are its ``[k, j, i]``, spacing is MITK's ``(x, y, z)``; origin and direction travel
with the segmentation's geometry, which must be the image's.
"""

import argparse
import os
import sys

import numpy as np

_default_model = None


def _model(model):
    global _default_model
    if model is not None:
        return model
    if _default_model is None:
        from . import Model

        _default_model = Model()
    return _default_model


def _check_image(image):
    if image.time_steps != 1 or image.ndim != 3 or len(image.shape) != 3:
        raise ValueError(
            f"dspnet.mitk: the image must be 3D with one time step and one component; it has shape "
            f"{tuple(image.shape)} and {image.time_steps} time step(s)"
        )


def _check_geometry(image, segmentation):
    for what, a, b in (
        ("spacing", segmentation.spacing, image.spacing),
        ("origin", segmentation.origin, image.origin),
        ("direction", np.asarray(segmentation.direction), np.asarray(image.direction)),
    ):
        if not np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0, atol=1e-4):
            raise ValueError(
                f"dspnet.mitk: the segmentation is not on the image's geometry ({what} "
                f"{np.asarray(a).tolist()} vs {np.asarray(b).tolist()})"
            )
    for g in range(segmentation.num_groups):
        shape = tuple(segmentation.get_group_image(g).shape)
        if shape != tuple(image.shape):
            raise ValueError(
                f"dspnet.mitk: group {g} of the segmentation has shape {shape}, the image {tuple(image.shape)}"
            )


def segment(image, segmentation, *, model=None, labels=None, **options):
    """Segment every label painted on some slices of ``segmentation`` (or only the label values in
    ``labels``) through ``image``; returns a new ``mitk.MultiLabelSegmentation``. ``model``: a
    :class:`dspnet.Model` (None: the default model); ``options``: those of :meth:`dspnet.Model.segment`.

    Raises ``ValueError`` for a 4D or multi-component image, a segmentation on another geometry, a
    requested label that does not exist or is not painted, or nothing painted at all; ``dspnet.DspnetError``
    subclasses for what libdspnet refuses."""
    import mitk

    _check_image(image)
    _check_geometry(image, segmentation)
    wanted_all = None if labels is None else {int(v) for v in labels}
    if wanted_all is not None:
        unknown = wanted_all - {int(v) for v in segmentation.label_values}
        if unknown:
            raise ValueError(
                f"dspnet.mitk: no label with value(s) {sorted(unknown)} in the segmentation "
                f"(it has {sorted(int(v) for v in segmentation.label_values)})"
            )
    plan = []
    for g in range(segmentation.num_groups):
        group = np.array(segmentation.get_group_image(g).array, dtype=np.uint16)  # (z, y, x), a copy
        values = [int(v) for v in segmentation.get_group_label_values(g)]
        chosen = [v for v in values if wanted_all is None or v in wanted_all]
        painted = [v for v in chosen if np.any(group == v)]
        if wanted_all is not None and len(painted) < len(chosen):
            empty = sorted(set(chosen) - set(painted))
            raise ValueError(f"dspnet.mitk: label(s) {empty} are not painted on any slice")
        if painted:
            plan.append((g, group, painted))
    if not plan:
        raise ValueError("dspnet.mitk: no label of the segmentation is painted on any slice")

    m = _model(model)
    voxels = np.asarray(image.array)  # (z, y, x) = [k, j, i], zero-copy
    result = segmentation.clone()
    for g, group, painted in plan:
        chosen = np.isin(group, painted)
        support = np.where(chosen, group, 0).astype(np.uint16)
        out = m.segment(voxels, support, image.spacing, index_order="kji", **options)
        others = (group != 0) & ~chosen  # labels not asked for stay exactly as they were
        write = (out != 0) & ~others
        merged = group.copy()
        merged[write] = out[write]
        result.set_group_image(g, merged)
    mitk.relations.segmentation.connect_source_image(result, image)
    return result


def _load_one(path, kind):
    import mitk

    objs = mitk.IOUtil.load(os.fspath(path))
    for o in objs:
        if isinstance(o, kind):
            return o
    if kind is mitk.MultiLabelSegmentation:  # a plain label image: one label per value
        for o in objs:
            if isinstance(o, mitk.Image):
                return mitk.MultiLabelSegmentation.from_labeled_image(o)
    raise ValueError(f"dspnet.mitk: {path}: MITK read no {kind.__name__} from it")


def save_atomically(segmentation, path):
    """Save through a temporary file in the same folder (same extension, so MITK picks the same writer),
    renamed into place: an interrupted save never leaves a partial file or clobbers an existing one."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{name}")
    try:
        segmentation.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m dspnet.mitk", description="Segment the labels painted in a MITK segmentation through the image."
    )
    p.add_argument("image", help="anything MITK reads: NRRD, NIfTI, a DICOM folder, ...")
    p.add_argument("segmentation", help="MITK multi-label segmentation (or a label image) on the image's grid")
    p.add_argument("-o", "--output", required=True, help="MITK multi-label segmentation file to write (.nrrd)")
    p.add_argument("--weights", help="model weights (.safetensors); default: the bundled default model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--labels", help="only these label values, comma separated")
    p.add_argument("--extent", default="auto")
    p.add_argument("--propagation", default="memory", choices=["memory", "independent"])
    a = p.parse_args(argv)
    import mitk
    from . import DspnetError, Model

    try:
        image = _load_one(a.image, mitk.Image)
        seg = _load_one(a.segmentation, mitk.MultiLabelSegmentation)
        labels = [int(v) for v in a.labels.split(",")] if a.labels else None
        with Model(a.weights, device=a.device) as model:
            result = segment(image, seg, model=model, labels=labels, extent=a.extent, propagation=a.propagation)
        save_atomically(result, a.output)
    except (ValueError, DspnetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
