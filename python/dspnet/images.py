"""Segment SimpleITK and nibabel images: geometry in, the same geometry out.

The engine works on the voxel grid; these helpers take the arrays and spacing from the image objects in
the right order and give back an image object of the same grid (origin, spacing, direction or affine).
SimpleITK and nibabel are imported only when used: neither is a dependency of the package.
"""

import numpy as np

from .binding import InvalidArgumentError, ShapeError, DSPNET_ERROR_INVALID_ARGUMENT, DSPNET_ERROR_SHAPE


def _grid_mismatch(what, a, b):
    return InvalidArgumentError(
        f"the support is not on the image's grid: {what} {a} vs {b}", status=DSPNET_ERROR_INVALID_ARGUMENT
    )


def segment_sitk(model, image, support, **options):
    """Segment a SimpleITK image from a SimpleITK label image (or a ``[k, j, i]`` array as
    ``sitk.GetArrayFromImage`` gives) painted on one or more slices. Returns a ``sitk.Image`` of uint16
    labels with the image's origin, spacing and direction. Options as :meth:`dspnet.Model.segment`."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ShapeError(
            f"need a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components",
            status=DSPNET_ERROR_SHAPE,
        )
    if isinstance(support, sitk.Image):
        if support.GetSize() != image.GetSize():
            raise _grid_mismatch("size", support.GetSize(), image.GetSize())
        for what, a, b in (
            ("spacing", support.GetSpacing(), image.GetSpacing()),
            ("origin", support.GetOrigin(), image.GetOrigin()),
            ("direction", support.GetDirection(), image.GetDirection()),
        ):
            if not np.allclose(a, b, rtol=0, atol=1e-3):
                raise _grid_mismatch(what, a, b)
        support = sitk.GetArrayViewFromImage(support)
    array = sitk.GetArrayViewFromImage(image)  # [k, j, i], no copy
    labels = model.segment(array, support, image.GetSpacing(), index_order="kji", **options)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


def segment_nibabel(model, image, support, **options):
    """Segment a nibabel image (NIfTI-1/2, or any spatial image with an affine) from a label image on
    the same grid (or an ``[i, j, k]`` array). Returns an image of the same class with uint16 labels,
    the image's affine and header (qform/sform kept, intensity scaling removed). Options as
    :meth:`dspnet.Model.segment`."""
    data = np.asanyarray(image.dataobj)
    data = _squeeze_to_3d(data, "image")
    if hasattr(support, "dataobj"):
        if not np.allclose(support.affine, image.affine, rtol=0, atol=1e-3):
            raise _grid_mismatch("affine", support.affine.tolist(), image.affine.tolist())
        support = np.asanyarray(support.dataobj)
    support = _squeeze_to_3d(np.asarray(support), "support")
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    labels = model.segment(data, support, spacing, **options)
    header = image.header.copy()
    header.set_data_dtype(np.uint16)
    out = image.__class__(labels, image.affine, header)
    if hasattr(out.header, "set_slope_inter"):
        out.header.set_slope_inter(1.0, 0.0)
    return out


def _squeeze_to_3d(a, what):
    """3D, or 4D+ with trailing axes of length 1 (NIfTI files often store a 3D volume so)."""
    while a.ndim > 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise ShapeError(f"{what} must be 3D, got shape {a.shape}", status=DSPNET_ERROR_SHAPE)
    return a
