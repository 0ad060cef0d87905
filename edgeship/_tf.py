"""Import TensorFlow and Keras quietly.

TensorFlow prints oneDNN, CUDA and CPU-feature notices on import, and absl prints more on every conversion. The
user asked for an artifact, not for those: silence them before the first import. Every module that needs TF goes
through :func:`tf` / :func:`keras`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from types import ModuleType
from typing import Iterator

_QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TF_ENABLE_ONEDNN_OPTS": "0",  # also makes results reproducible run to run
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "3",
    "ABSL_MIN_LOG_LEVEL": "3",
    "KERAS_BACKEND": "tensorflow",
    "CUDA_VISIBLE_DEVICES": "-1",
}


def quiet_environment() -> None:
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TensorFlow version.*has not been tested with coremltools.*")
    warnings.filterwarnings("ignore", message=".*scikit-learn version.*is not supported.*")
    for name in ("tensorflow", "absl", "tf2onnx", "coremltools", "h5py", "onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def silenced(fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Hide what TF and the converters print, at both levels: the process's file descriptors (C++ notices,
    printed before absl logging starts) and Python's ``sys.stdout``/``sys.stderr`` (Keras' ``export``, called
    inside the TFLite converter, prints every captured resource; when those objects are replaced, as under pytest
    or in a notebook, the fd redirect alone misses them). No environment variable reaches either.

    On an exception the captured text travels with the exception (``captured_output``) and the CLI prints it for
    a crash, so nothing that explains a failure is lost. ``EDGESHIP_VERBOSE=1`` shows everything.
    """
    if os.environ.get("EDGESHIP_VERBOSE"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    python_level = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as captured, contextlib.ExitStack() as stack:
        if 1 in fds:
            stack.enter_context(contextlib.redirect_stdout(python_level))
        if 2 in fds:
            stack.enter_context(contextlib.redirect_stderr(python_level))
        for fd in fds:
            os.dup2(captured.fileno(), fd)
        try:
            yield
        except BaseException as e:
            # Keep what the converter printed with the exception: the CLI shows it when the failure is a bug,
            # and drops it when edgeship has turned the failure into a one-line user error.
            sys.stdout.flush()
            sys.stderr.flush()
            captured.seek(0)
            text = captured.read().decode(errors="replace") + python_level.getvalue()
            if text.strip():
                try:
                    e.captured_output = getattr(e, "captured_output", "") + text[-20000:]  # type: ignore[attr-defined]
                except AttributeError:  # an exception type that takes no attributes: nothing to keep it on
                    pass
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, orig in saved.items():
                os.dup2(orig, fd)
                os.close(orig)


def _import_tensorflow() -> ModuleType:
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with silenced((2,)):
        import tensorflow
    return tensorflow


def tf() -> ModuleType:
    quiet_environment()
    tensorflow = _import_tensorflow()

    tensorflow.get_logger().setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # pragma: no cover - absl ships with tensorflow
        pass
    return tensorflow


def keras() -> ModuleType:
    tf()
    import keras as _keras

    return _keras


def import_quietly(module: str) -> ModuleType:
    """Import a converter that prints on import (coremltools warns about untested TF and scikit-learn versions
    and about its missing macOS-only proxies; tf2onnx imports TF). TF first, so its own notices are caught too."""
    import importlib

    if module in sys.modules:
        return sys.modules[module]
    if not ("tensorflow" in sys.modules and sys.modules["tensorflow"] is None):  # None: kept out on purpose
        tf()  # (an artifact's runtime process, edgeship.validate.contained)
    with silenced():
        return importlib.import_module(module)
