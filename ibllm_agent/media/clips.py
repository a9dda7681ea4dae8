"""Where the clips of an audio or video input start and end.

This is pytorchvideo's ``ConstantClipsPerVideoSampler`` as ImageBind uses it: `n` clips of
`clip_s` seconds spread evenly, clip k starting at ``k * Fraction(max(duration - clip_s, 0)) / (n - 1)``.
A file shorter than one clip gives `n` identical clips [0, clip_s). The subtraction happens in the
type of `duration` (a float for audio, where 2.9 - 2 = 0.8999999999999999; an exact Fraction for
video); everything after it is exact rational arithmetic.
"""

from __future__ import annotations

from fractions import Fraction


def clip_spans(duration: float | Fraction, clip_s: int, n: int) -> list[tuple[Fraction, Fraction]]:
    """[(start, end)] in seconds, exact."""
    step = Fraction(max(duration - clip_s, 0)) / max(n - 1, 1)
    return [(step * k, step * k + clip_s) for k in range(n)]
