"""The GUI side of a background propagation, shared by the module widget and the Few-Shot effect.

``TaskMonitor`` shows a running ``SegmentationTask`` (libdspnet on a worker thread, see logic.py): it polls
the task with a QTimer on the main thread, drives a progress bar and a Stop button, and hands the finished
task (done, cancelled or failed) to a callback, on the main thread, where MRML and Qt may be touched.
``reportError`` turns any failure into one status line, one log entry and one error dialog. ``DEVICES`` is
the device list both offer.

Qt is imported when a monitor is made, not with this module, so the package imports without Qt.
"""

import logging
import traceback

import slicer

from FewShotSegmentLib import binding
from FewShotSegmentLib.logic import ObliqueViewError

DEVICES = (("Auto", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda"))

ERROR_STYLE = "color: #c62828;"


def fillDeviceComboBox(comboBox):
    for label, value in DEVICES:
        comboBox.addItem(label, value)


class TaskMonitor:
    """Polls one background task at a time for a widget (see the module docstring)."""

    POLL_INTERVAL_MS = 200

    def __init__(self, onFinished, progressFormat=None):
        import qt

        self.task = None
        self.progressBar = None
        self.stopButton = None
        self.progressFormat = progressFormat
        self._onFinished = onFinished
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.poll)

    def setWidgets(self, progressBar, stopButton):
        """The progress bar and Stop button to drive (hidden while nothing runs)."""
        self.progressBar, self.stopButton = progressBar, stopButton
        self._showProgress(False)

    @property
    def running(self):
        return self.task is not None

    def start(self, task):
        """Monitor an already started task: busy indicator until its first progress report."""
        self.task = task
        if self.progressBar is not None:
            self.progressBar.setRange(0, 0)
        self._showProgress(True)
        if self.stopButton is not None:
            self.stopButton.setEnabled(True)
        self.timer.start()

    def stop(self):
        """Ask the running task to stop after the current slice; False when nothing runs."""
        if self.task is None:
            return False
        self.task.cancel()
        if self.stopButton is not None:
            self.stopButton.setEnabled(False)
        return True

    def abandon(self):
        """Cancel and forget the running task (its result is dropped) without calling back."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()  # the worker stops at the next slice
        self.timer.stop()
        self._showProgress(False)

    def close(self):
        self.abandon()
        self.timer.disconnect("timeout()", self.poll)

    def poll(self):
        """The timer's callback (main thread): show progress; once finished, call back with the task."""
        task = self.task
        if task is None:
            self.timer.stop()
            return
        done, total = task.progress
        if total and self.progressBar is not None:
            self.progressBar.setRange(0, total)
            self.progressBar.setValue(done)
            if self.progressFormat:
                self.progressBar.setFormat(self.progressFormat)
        if not task.finished:
            return
        self.timer.stop()
        self.task = None
        self._showProgress(False)
        self._onFinished(task)

    def _showProgress(self, visible):
        for widget in (self.progressBar, self.stopButton):
            if widget is not None:
                widget.setVisible(visible)


def errorMessage(error):
    """What the user is told about ``error``: libdspnet's own message with its status name."""
    if isinstance(error, binding.LibraryNotFoundError):
        return f"{error}\n\nSee the Few-Shot Segment module for how to install libdspnet."
    if isinstance(error, ObliqueViewError):
        return str(error)
    if isinstance(error, binding.DspnetError):
        return f"{error.message} ({error.status_name})"
    return str(error) or error.__class__.__name__


def taskErrorDetails(error):
    """The worker's traceback, for the dialog's details."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def reportError(error, setStatus, details=None):
    """Log ``error``, show it in red through ``setStatus(text, error=True)`` and in an error dialog."""
    message = errorMessage(error)
    logging.error("Few-Shot: %s", message)
    if details:
        logging.debug(details)
    setStatus("Few-Shot failed: " + message, error=True)
    extra = {"detailedText": details} if details else {}
    slicer.util.errorDisplay("Few-Shot segmentation failed:\n\n" + message, **extra)
