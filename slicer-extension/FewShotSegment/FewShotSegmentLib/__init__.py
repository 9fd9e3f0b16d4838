"""Few-Shot Segment: the Qt-free part of the 3D Slicer extension.

- ``FewShotSegmentLib.binding``: ctypes binding of libdspnet's C ABI (numpy only).
- ``FewShotSegmentLib.logic``: ``FewShotSegmentLogic`` on MRML nodes (3D Slicer or PyPI slicer-core).
- ``FewShotSegmentLib.testing``: the test scenario shared by the in-Slicer module test and the CI tests.

``SegmentEditorEffect.py`` (the Segment Editor effect, Qt) is loaded by Slicer from its file path and is
deliberately not imported here, so that this package imports without Qt.
"""
