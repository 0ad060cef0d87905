"""The validate stage: run every artifact in its own runtime against the float reference and gate the release.

Python API::

    from edgeship.validate import validate
    report = validate(["edgeship-out"], report_dir="edgeship-out/report")
    print(report.passed)
"""

__all__ = ["ValidateOptions", "validate", "validate_with"]


def __getattr__(name: str):  # lazy: keep `import edgeship.validate` light
    if name in ("validate", "validate_with"):
        from edgeship.validate import pipeline

        return getattr(pipeline, name)
    if name == "ValidateOptions":
        from edgeship.validate.options import ValidateOptions

        return ValidateOptions
    raise AttributeError(name)
