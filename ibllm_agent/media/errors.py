"""Typed errors for media loading: one base class, one subclass per kind of problem.

Every error names the input (file name or the name given for bytes) and says what is wrong,
so a UI or an agent can show it as is. `MediaError` derives from `ValueError`: callers that
already catch bad input as `ValueError` keep working.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


class MediaError(ValueError):
    """A media input could not be loaded. `source` names the input, `problem` says why."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class UnsupportedFormatError(MediaError):
    """The content is not a format we read, or not the format the caller asked for."""


class WrongChannelsError(UnsupportedFormatError):
    """The content has other channels than the modality needs: a colour picture given as a depth map or a
    thermal image, an IMU table without gyroscope axes, an array of the wrong shape."""


class CorruptMediaError(MediaError):
    """The format was recognised but the content cannot be decoded (truncated, inconsistent)."""


class EmptyMediaError(MediaError):
    """Nothing to work with: zero bytes, no samples or frames, or too small to carry content."""


class MediaTooLargeError(MediaError):
    """Over a size limit of `MediaLimits` (bytes, pixels, points, characters)."""


class MediaTooLongError(MediaError):
    """Over a duration or frame-count limit of `MediaLimits`."""


class InvalidValuesError(MediaError):
    """Decoded values are unusable, e.g. NaN or infinite point coordinates."""


class UnsafeMediaError(MediaError):
    """The file would run code or reach outside itself when loaded (e.g. a pickle with code)."""


@contextlib.contextmanager
def typed_errors(name: str, what: str) -> Iterator[None]:
    """Turn a decoder failing in a way we did not foresee into a CorruptMediaError (no deep
    library traceback for the caller; the original is logged at debug level)."""
    try:
        yield
    except MediaError:
        raise
    except MemoryError:
        raise MediaTooLargeError(name, f"ran out of memory while decoding it as {what}") from None
    except Exception as e:
        log.debug("unexpected error while loading %s", name, exc_info=True)
        raise CorruptMediaError(name, f"could not decode it as {what} ({type(e).__name__}: {e})") from None
