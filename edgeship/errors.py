"""The kinds of failure edgeship distinguishes, and the exit code each one means (the CLI's contract).

==== =============================================================================================================
code meaning
==== =============================================================================================================
0    success: every release gate passed
1    a release gate failed (an artifact does not agree with the float model, or was modified since the manifest)
2    bad input or usage: :class:`UserError` (a missing path, an unknown format, an untrusted model, a config or
     policy value of the wrong type or outside its meaning, a manifest path outside its directory)
3    the environment: :class:`EnvironmentProblem` (disk full, permission denied, an output/report directory that
     cannot be written, a runtime or library that is not installed); the same input may pass elsewhere
4    a bug in edgeship itself (anything else); ``EDGESHIP_DEBUG=1`` shows its traceback
==== =============================================================================================================

The CLI prints each failure as one line (``edgeship: error: ...``) without a traceback; ``EDGESHIP_DEBUG=1``
re-raises it so the traceback shows.
"""

from __future__ import annotations

import errno as _errno
import os


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do. Exit code 2."""

    exit_code = 2


class ConversionError(UserError):
    """A converter could not handle the model; the message names the layer and the format."""


class EnvironmentProblem(UserError):
    """The machine, not the input: disk full, permission denied, an unwritable output directory, a missing
    runtime. Exit code 3 (a CI job can tell it from a failed gate, 1, and from bad input, 2)."""

    exit_code = 3


#: errno values that mean the environment (space, permissions, read-only media), not the user's input
_ENVIRONMENT_ERRNOS = {_errno.ENOSPC, _errno.EACCES, _errno.EPERM, _errno.EROFS, _errno.EDQUOT, _errno.EMFILE,
                       _errno.ENFILE, _errno.ENOMEM, _errno.EIO}
_HINTS = {_errno.ENOSPC: "free some space or choose another output directory",
          _errno.EDQUOT: "free some space or choose another output directory",
          _errno.EACCES: "check the permissions or choose another path",
          _errno.EPERM: "check the permissions or choose another path",
          _errno.EROFS: "the filesystem is read-only: choose another path"}


def from_os_error(e: OSError) -> UserError:
    """An ``OSError`` that reached the CLI boundary as one line: :class:`EnvironmentProblem` (exit 3) for space,
    permission and I/O errors, :class:`UserError` (exit 2) for a path that does not exist or has the wrong kind
    (file vs directory)."""
    name = _errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    what = e.strerror or str(e) or type(e).__name__
    where = f": {os.fsdecode(e.filename)}" if e.filename is not None else ""
    hint = _HINTS.get(e.errno or -1, "")
    text = f"{what}{f' ({name})' if name else ''}{where}" + (f"; {hint}" if hint else "")
    if e.errno in _ENVIRONMENT_ERRNOS or e.errno is None:
        return EnvironmentProblem(text)
    return UserError(text)
