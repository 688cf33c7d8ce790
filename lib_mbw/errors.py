"""Error types of auto-MBW.

Every error a user can cause carries a message that names the file or field
and says what to do. Hosts (CLI, UI, WebUI) show ``str(error)`` as is; the CLI
turns any ``MBWError`` into a one-line message and a non-zero exit code.
"""

from __future__ import annotations


class MBWError(Exception):
    """Base class of the errors auto-MBW reports to users."""


class ModelFormatError(MBWError):
    """A checkpoint file is missing, unreadable, of an unsupported kind, or corrupt."""


class ArchitectureMismatchError(MBWError):
    """Two models cannot be merged because their architectures or keys differ."""


class UnknownKeyError(MBWError):
    """A UNet key does not belong to any known block."""


class RecipeError(MBWError):
    """A recipe is malformed: wrong count, unknown block, value out of range."""


class OutputExistsError(MBWError):
    """An output file exists and overwriting it was not asked for."""


class PickleRefusedError(ModelFormatError):
    """A pickle checkpoint (.ckpt/.pt/.bin) was given without the explicit opt-in."""


class EvaluationFailed(MBWError):
    """One evaluation produced no usable score (generator error, NaN score, black images).

    The loop records it with ``reason`` and does not feed it to the optimizer.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PayloadError(MBWError):
    """A payload file or field is invalid; the message names the file and field."""


class OutputWriteError(MBWError):
    """An output file could not be written (disk full, permissions); no partial file is left behind."""


class VerifyError(MBWError):
    """A merged file cannot be verified: no auto-MBW recipe in it, or a source model is missing or changed."""


class GenerationInterrupted(MBWError):
    """The user interrupted generation (the WebUI's Interrupt button or a stop request).

    The search stops (it does not count as a failed evaluation) and the model is restored.
    """


class HostBusyError(MBWError):
    """The WebUI is busy (a search or a generation holds its queue); try again when it has finished."""


class WorkerUnavailableError(MBWError):
    """A remote worker cannot be reached or keeps failing after retries.

    Not the candidate's fault: the search pauses (resumable) instead of recording a failure.
    """


class ScorerError(MBWError):
    """A scorer cannot be set up: unknown name, bad setting, missing reference image or model file."""


class IdenticalModelsError(MBWError):
    """Models A and B are the same (same file or identical UNet tensors): every merge would score the same."""


class RuntimeMergeError(MBWError):
    """The live model cannot be merged in place now (closed merger, lock misuse, unsupported parameter)."""
