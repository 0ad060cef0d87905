"""The validate stage: run every artifact in its own runtime against the float reference and gate the release.

Python API::

    from edgeship.validate import validate
    report = validate(["edgeship-out"], report_dir="edgeship-out/report")
    print(report.passed)
"""

__all__ = ["validate"]


def __getattr__(name: str):  # lazy: keep `import edgeship.validate` light
    if name == "validate":
        from edgeship.validate.pipeline import validate

        return validate
    raise AttributeError(name)
