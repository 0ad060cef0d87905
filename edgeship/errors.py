"""The kinds of failure edgeship distinguishes.

A :class:`UserError` is the user's to fix (a missing path, an unknown format, an untrusted model): the CLI prints
its one-line message and exits 2, without a traceback. An :class:`EnvironmentProblem` is the machine's (a full
disk, a permission): one line too, exit 3. Anything else is a bug in edgeship and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what is wrong and what to do. Exit code 2."""

    exit_code = 2


class EnvironmentProblem(UserError):
    """The machine, not the input: a full disk, a permission, a read-only filesystem. Exit code 3."""

    exit_code = 3


class ConversionError(UserError):
    """A converter could not handle the model; the message names the layer and the format."""
