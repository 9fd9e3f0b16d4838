"""Few-Shot Segment: the Qt-free part of the 3D Slicer extension.

- ``FewShotSegmentLib.binding``: the ``dspnet`` Python package's binding of libdspnet (numpy only). The
  extension has no binding of its own: it bundles the package (python/dspnet in the repository) next to
  this module, so pip users and Slicer run the same code.
- ``FewShotSegmentLib.logic``: ``FewShotSegmentLogic`` on MRML nodes (3D Slicer or PyPI slicer-core).
- ``FewShotSegmentLib.testing``: the test scenario shared by the in-Slicer module test and the CI tests.

``SegmentEditorEffect.py`` (the Segment Editor effect, Qt) is loaded by Slicer from its file path and is
deliberately not imported here, so that this package imports without Qt.
"""

import os
import sys


def _put_dspnet_on_path():
    """Prefer the dspnet package that ships with this extension over any other installed one: the
    installed extension's copy (qt-scripted-modules/dspnet, beside this package), else a source
    checkout's (<repo>/python/dspnet). A pip-installed dspnet is used only when neither is there."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.dirname(here), os.path.normpath(os.path.join(here, "..", "..", "..", "python"))):
        if os.path.isfile(os.path.join(root, "dspnet", "binding.py")):
            if root not in sys.path:
                sys.path.insert(0, root)
            return


_put_dspnet_on_path()
from dspnet import binding  # noqa: E402
