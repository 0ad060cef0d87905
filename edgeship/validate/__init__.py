"""The validate stage: run every artifact in its own runtime against the float reference and gate the release.

This package holds the interface every runtime implements (:mod:`edgeship.validate.runner`); the comparison
loop, the policy gates and the reports build on it.
"""

from edgeship.validate.runner import InputInfo, Runner

__all__ = ["InputInfo", "Runner"]
