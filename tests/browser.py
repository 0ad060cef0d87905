"""Headless Chromium for the layout tests of report.html, from Debian's packages, without root.

:func:`headless_chromium` brings Debian's ``chromium-headless-shell`` and the shared libraries it needs that this
machine lacks into a cache, ``~/.cache/edgeship-tests/chromium`` (``EDGESHIP_TEST_CACHE`` moves the parent), once:
apt's package lists fetched into the cache (``apt-get update`` with ``Dir::State::Lists`` there: no root, and no
stale system lists), the packages ``apt-get -s install`` would add, ``apt-get download`` of them (about 90 MB) and
``dpkg-deb -x`` of each. Later runs use the cache and no network. Only the package registry is reached.

:class:`Page` drives it over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fds 3 and 4, one JSON
message per NUL-terminated line; no port, no extra package): open a file at a window size, evaluate JavaScript
(the DevTools protocol is not bound by the page's Content-Security-Policy, which forbids scripts), take a PNG.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

PACKAGE = "chromium-headless-shell"
BINARY = Path("usr/lib/chromium/chromium-headless-shell")
#: What apt prints when the registry cannot be reached (the test skips then, saying so)
_OFFLINE = ("Could not resolve", "Failed to fetch", "Temporary failure", "unreachable", "Connection failed",
            "Could not connect", "Network is unreachable", "Connection timed out")


class Unavailable(Exception):
    """The registry or apt cannot be reached here: the caller skips, saying this."""


def cache_root() -> Path:
    return Path(os.environ.get("EDGESHIP_TEST_CACHE") or Path.home() / ".cache" / "edgeship-tests")


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900)


def _offline(text: str) -> bool:
    return any(s in text for s in _OFFLINE)


def _why_offline(text: str) -> str:
    """apt's first line that says the registry cannot be reached."""
    return next((line.strip() for line in text.splitlines() if _offline(line)), text.strip()[-300:])


def _fetch(home: Path) -> str:
    """Fill ``home/root`` with the unpacked packages; return the version fetched."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable("no apt-get/dpkg-deb here: Chromium comes from Debian's packages")
    apt = home / "apt"
    for d in (apt / "lists" / "partial", apt / "cache" / "archives" / "partial", home / "debs"):
        d.mkdir(parents=True, exist_ok=True)
    # lists and cache of its own, no lock on the system's, and no switch to the _apt user (which could not write
    # this cache, and which a user namespace cannot switch to)
    opts = ["-o", f"Dir::State::Lists={apt / 'lists'}", "-o", f"Dir::Cache={apt / 'cache'}",
            "-o", "Debug::NoLocking=1", "-o", f"APT::Sandbox::User={pwd.getpwuid(os.getuid()).pw_name}"]
    update = _run(["apt-get", *opts, "update"])
    text = update.stdout + update.stderr
    if update.returncode != 0 or "Err:" in text:
        if _offline(text):
            raise Unavailable(f"the Debian registry is unreachable ({_why_offline(text)})")
        raise RuntimeError(f"apt-get update (lists in {apt}) failed: {text.strip()[-800:]}")
    plan = _run(["apt-get", *opts, "-s", "install", "--no-install-recommends", PACKAGE])
    packages = [line.split()[1] for line in plan.stdout.splitlines() if line.startswith("Inst ")]
    if plan.returncode != 0 or PACKAGE not in packages:
        raise RuntimeError(f"apt-get -s install {PACKAGE} failed: {(plan.stderr or plan.stdout).strip()[-800:]}")
    version = next(line.split()[2].strip("(") for line in plan.stdout.splitlines()
                   if line.startswith(f"Inst {PACKAGE} "))
    got = _run(["apt-get", *opts, "download", *packages], cwd=home / "debs")
    if got.returncode != 0:
        if _offline(got.stderr):
            raise Unavailable(f"the Debian registry is unreachable ({_why_offline(got.stderr)})")
        raise RuntimeError(f"apt-get download failed: {got.stderr.strip()[-800:]}")
    for deb in sorted((home / "debs").glob("*.deb")):
        done = _run(["dpkg-deb", "-x", str(deb), str(home / "root")])
        if done.returncode != 0:
            raise RuntimeError(f"dpkg-deb -x {deb.name}: {done.stderr.strip()}")
    shutil.rmtree(home / "debs")
    shutil.rmtree(apt)
    return version


def _library_dirs(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("*.so*") if p.is_file()})


def headless_chromium() -> tuple[Path, dict[str, str]]:
    """(the chromium-headless-shell binary, the environment to run it with), fetched into the cache on first use
    (:func:`_fetch`). :class:`Unavailable` when the registry cannot be reached; any other failure raises."""
    from filelock import FileLock

    home = cache_root() / "chromium"
    marker = home / "complete"
    home.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{home}.lock"):  # pytest-xdist's workers: one fetches, the others wait for it
        if not marker.exists():
            if home.exists():  # a fetch cut short
                shutil.rmtree(home)
            home.mkdir()
            marker.write_text(_fetch(home) + "\n")
    root = home / "root"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, _library_dirs(root)),
                                              *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])
    return root / BINARY, env


class Page:
    """One headless Chromium tab, driven over the DevTools pipe. Use as a context manager."""

    def __init__(self, binary: Path, env: dict[str, str]):
        self._profile = tempfile.TemporaryDirectory(prefix="edgeship-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        def as_fds_3_and_4() -> None:
            """In the child: Chromium reads commands from fd 3 and writes answers to fd 4. Both ends are first
            moved above 9, so that one cannot overwrite the other if the pipe gave it fd 3 or 4."""
            import fcntl

            read, write = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self._proc = subprocess.Popen(
            [str(binary), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
             "--no-first-run", "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}", "about:blank"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=as_fds_3_and_4)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self._session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.enable", session=True)

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    def _read(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium over the DevTools pipe")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self._proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, *, session: bool = False, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read(timeout)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def open(self, path: Path, width: int, height: int, *, mobile: bool = False) -> None:
        """Load the file in a viewport of ``width`` x ``height`` CSS pixels (``mobile``: as a phone, where the
        page's viewport meta tag applies) and wait for it to finish loading."""
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=mobile)
        self.call("Page.navigate", session=True, url=Path(path).resolve().as_uri())
        deadline = time.monotonic() + 30
        while self.evaluate("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not finish loading")
            time.sleep(0.05)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, *, full_page: bool = False) -> None:
        """A PNG of the viewport (``full_page``: of the whole page at the viewport's width)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            w, h = self.evaluate("[document.documentElement.clientWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
