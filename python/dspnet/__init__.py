"""dspnet: few-shot CT/MRI segmentation from one painted slice (DSPNet), in Python.

numpy in, numpy out; arrays indexed ``[i, j, k]`` as nibabel returns them::

    import dspnet
    model = dspnet.Model()                               # default model, CPU; Model("w.safetensors", device=...)
    labels = model.segment(image, support, spacing=(0.8, 0.8, 2.5))
    labels, summary = model.segment(image, support, spacing=sp, return_summary=True)

    with model.session(image, spacing=sp) as session:   # corrections: only the head runs again
        labels, summary = session.segment(support)

    dspnet.segment_sitk(model, sitk_image, sitk_support)        # SimpleITK images, geometry kept
    dspnet.segment_nibabel(model, nifti_image, nifti_support)   # nibabel images, affine kept
    dspnet.segment_files(model, "ct.nii.gz", "painted.nii.gz", "out.nii.gz")

    from dspnet.dask import segment_many                 # a manifest of studies on a Dask cluster
    import dspnet.mitk                                   # MITK images and multi-label segmentations

The library (libdspnet) and the default model travel inside the package; no PyTorch is needed.
"""

from . import binding
from .binding import (  # noqa: F401
    ABI_VERSION,
    HEAD_KEYS,
    BackendError,
    BackendUnavailableError,
    BusyError,
    CancelledError,
    DspnetError,
    DspnetIOError,
    DspnetOutOfMemoryError,
    InvalidArgumentError,
    LibraryNotFoundError,
    Model,
    ModelFormatError,
    NoSupportError,
    NonFiniteError,
    NullArgumentError,
    PanicError,
    Session,
    ShapeError,
    Summary,
    VolumeFormatError,
    load_library,
    segment_files,
)
from .images import segment_nibabel, segment_sitk  # noqa: F401

__version__ = "0.4.0"


def library_version():
    """(libdspnet version string, C ABI version) of the library this package loads."""
    return binding.version()
