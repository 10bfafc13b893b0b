"""Progress bars for long work, drawn only where a person is watching.

A bar redraws itself with carriage returns and escape codes; in a CI log or a
file those become hundreds of garbage lines. So every long-running step of
movierec (training, index builds, downloads) makes its bar here: drawn when the
caller asks for one *and* the bar's stream is a terminal, silent otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm


def on_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm draws) is an interactive terminal."""
    target = sys.stderr if stream is None else stream
    isatty = getattr(target, "isatty", None)
    return bool(isatty is not None and isatty())


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **options: Any) -> Any:
    """A :class:`tqdm` bar (same keyword options) that is disabled unless ``enabled`` and its stream is a terminal.

    Returned as ``Any`` like tqdm itself (untyped): use it as a context manager,
    an iterator or call ``update``, exactly as a tqdm bar.
    """
    drawn = enabled and on_terminal(options.get("file"))
    return tqdm(iterable, disable=not drawn, **options)
