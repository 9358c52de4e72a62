# -*- test-case-name: tests.test_packaging -*-
"""
Tests for the packaging: the wheel ships the twistd plugin file (and never
Twisted's own C{__init__.py} files), and a fresh install lists every plugin.

These tests build a wheel from a copy of the checkout and install it, with its
dependencies, into a new venv: they take a few tens of seconds (pip's cache
makes the install fast) and need the C{build} package in the running venv.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from twisted.trial.unittest import FailTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

PLUGIN_FILE = "twisted/plugins/smobility_plugins.py"
FORBIDDEN_FILES = ("twisted/__init__.py", "twisted/plugins/__init__.py")
PLUGIN_NAMES = ("smobility-home", "smobility-relay", "smobility-mux", "smobility-client")

BUILD_TIMEOUT = 180.0
INSTALL_TIMEOUT = 600.0
RUN_TIMEOUT = 120.0

# What is not part of a source tree: never copied into the build directory.
_IGNORED_AT_ROOT = {".git", ".venv", "build", "dist", "bench"}
_IGNORED_ANYWHERE = shutil.ignore_patterns(
    "*.egg-info",
    "_trial_temp*",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "dropin.cache",
)


def _ignored(directory: str, names: list[str]) -> set[str]:
    """C{shutil.copytree}'s ignore callback: build output, caches and VCS data."""
    ignored = set(_IGNORED_ANYWHERE(directory, names))
    if Path(directory) == ROOT:
        ignored |= _IGNORED_AT_ROOT & set(names)
    return ignored


def _run(argv: list[str], timeout: float, cwd: Path, env: dict[str, str] | None = None) -> str:
    """
    Run C{argv} and return its combined output.

    @raise FailTest: if it exits non-zero or runs out of time, with the output.
    """
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise FailTest(f"{argv!r} took more than {timeout}s:\n{e.output}") from e
    if proc.returncode != 0:
        raise FailTest(f"{argv!r} exited with {proc.returncode}:\n{proc.stdout}")
    return proc.stdout


def _cleanEnv() -> dict[str, str]:
    """The environment for the installed venv: nothing that points back at the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@dataclass
class _Installed:
    """A wheel built from the checkout and a fresh venv it is installed in."""

    wheel: Path
    venv: Path
    workdir: Path

    def bin(self, name: str) -> str:
        """The path of C{name} in the installed venv's bin directory."""
        return str(self.venv / "bin" / name)


_cache: dict[str, _Installed | BaseException] = {}


def _buildWheel(base: Path) -> Path:
    """Build a wheel from a copy of the checkout; return its path."""
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=_ignored, symlinks=True)
    outdir = base / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir)],
        BUILD_TIMEOUT,
        cwd=src,
    )
    wheels = sorted(outdir.glob("smobility-*.whl"))
    if len(wheels) != 1:
        raise FailTest(f"expected one wheel in {outdir}, found {wheels}")
    return wheels[0]


def _install(wheel: Path, base: Path) -> Path:
    """Create a fresh venv under C{base} and pip install C{wheel} there, with its deps."""
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], RUN_TIMEOUT, cwd=base, env=_cleanEnv())
    _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        INSTALL_TIMEOUT,
        cwd=base,
        env=_cleanEnv(),
    )
    return venv


def installed() -> _Installed:
    """
    Build and install the wheel once per test process; return where it is.

    A failure is remembered, so every test that needs the install reports it
    without trying again.
    """
    found = _cache.get("installed")
    if found is None:
        base = Path(tempfile.mkdtemp(prefix="smob-packaging-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        try:
            wheel = _buildWheel(base)
            venv = _install(wheel, base)
            work = base / "work"
            work.mkdir()
            found = _Installed(wheel=wheel, venv=venv, workdir=work)
        except BaseException as e:
            _cache["installed"] = e
            raise
        _cache["installed"] = found
    if isinstance(found, BaseException):
        raise FailTest(f"building or installing the wheel failed earlier: {found}")
    return found


class WheelContentsTests(SynchronousTestCase):
    """The wheel built from the checkout holds the plugin file and nothing of Twisted's."""

    def test_pluginFileShipped(self) -> None:
        """The wheel contains C{twisted/plugins/smobility_plugins.py}."""
        with zipfile.ZipFile(installed().wheel) as zf:
            names = zf.namelist()
        self.assertIn(PLUGIN_FILE, names)

    def test_noTwistedInitFiles(self) -> None:
        """
        The wheel contains neither C{twisted/__init__.py} nor
        C{twisted/plugins/__init__.py}: installing either would overwrite
        Twisted's own.
        """
        with zipfile.ZipFile(installed().wheel) as zf:
            names = set(zf.namelist())
        for forbidden in FORBIDDEN_FILES:
            self.assertNotIn(forbidden, names)
        # Nothing else under twisted/ but the plugin file.
        twistedFiles = sorted(n for n in names if n.startswith("twisted/"))
        self.assertEqual(twistedFiles, [PLUGIN_FILE])

    def test_packageShipped(self) -> None:
        """The wheel contains the C{smobility} package."""
        with zipfile.ZipFile(installed().wheel) as zf:
            names = zf.namelist()
        self.assertIn("smobility/__init__.py", names)


class InstalledPluginTests(SynchronousTestCase):
    """A fresh venv with the wheel installed runs the plugins through C{twistd}."""

    def test_twistdListsPlugins(self) -> None:
        """C{twistd --help} in the installed venv lists all four plugins."""
        inst = installed()
        out = _run([inst.bin("twistd"), "--help"], RUN_TIMEOUT, cwd=inst.workdir, env=_cleanEnv())
        for name in PLUGIN_NAMES:
            self.assertIn(name, out)

    def test_twistedStillImports(self) -> None:
        """
        Installing the wheel leaves Twisted's own C{twisted.plugins} package
        intact, and the plugin module is found through it.
        """
        inst = installed()
        code = (
            "import twisted, twisted.plugins, twisted.plugins.smobility_plugins as p; "
            "print(twisted.__file__); print(p.__file__)"
        )
        out = _run([inst.bin("python"), "-c", code], RUN_TIMEOUT, cwd=inst.workdir, env=_cleanEnv())
        twistedFile, pluginFile = out.split()
        self.assertTrue(twistedFile.startswith(str(inst.venv)), twistedFile)
        self.assertTrue(pluginFile.startswith(str(inst.venv)), pluginFile)

    def test_pluginSubcommandsHelp(self) -> None:
        """
        C{twistd NAME --help} works for every plugin: it imports the tap module
        from the installed package and parses its options.
        """
        inst = installed()
        for name in PLUGIN_NAMES:
            out = _run(
                [inst.bin("twistd"), name, "--help"],
                RUN_TIMEOUT,
                cwd=inst.workdir,
                env=_cleanEnv(),
            )
            self.assertIn("Usage:", out)
