"""Pieces the cross-check scripts of tests/torch share: optional-package imports that skip (exit 77, never a pass)
when a package is missing, the built test tool a script drives, the relative error every numeric comparison uses,
running a command, and the closing verdict. Not a test itself (ctest runs tests/torch/test_*.py only)."""

import importlib
import os
import subprocess
import sys


def skip(reason):
    """Ends the script as skipped (ctest's SKIP_RETURN_CODE 77): a missing package or file, never a pass."""
    print(f"SKIP: {reason}")
    sys.exit(77)


def require(*modules):
    """Imports the named modules (e.g. "numpy", "torch"), skipping the whole script if one is missing."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError as e:
        skip(e)


def built_tool(name, executable=True):
    """The path of tests/tools/NAME in the build directory TL_TEST_BIN, or None after printing why it is unusable
    (the caller then fails: a missing tool is a broken build, not a skip)."""
    bindir = os.environ.get("TL_TEST_BIN")
    if not bindir:
        print("FAIL: TL_TEST_BIN (the build directory) is not set")
        return None
    tool = os.path.join(bindir, name)
    if not (os.access(tool, os.X_OK) if executable else os.path.exists(tool)):
        print(f"FAIL: {tool} was not built")
        return None
    return tool


def rel_err(a, b):
    """max|a - b| / max|b| over whole arrays (b the reference), with the reason when it is infinite: shapes differ,
    a value is not finite, or the reference is all zero while a is not."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf"), f"shape {a.shape} vs reference {b.shape}"
    if not np.all(np.isfinite(a)):
        return float("inf"), "non-finite values in tailor's output"
    if not np.all(np.isfinite(b)):
        return float("inf"), "non-finite values in the reference"
    mb = np.max(np.abs(b)) if b.size else 0.0
    md = np.max(np.abs(a - b)) if b.size else 0.0
    if mb == 0.0:
        return (0.0, "") if md == 0.0 else (float("inf"), f"reference is 0, tailor max |x| = {md:.3g}")
    return md / mb, ""


def sh(args, what, timeout=120):
    """Runs a command; its stdout (text), or RuntimeError naming what failed with the tail of its output."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}")
    return r.stdout


def verdict(failures, headline="FAIL:"):
    """Prints the failures under the headline and returns 1, or prints PASS and returns 0 (main's exit code)."""
    if failures:
        print(headline)
        for f in failures:
            print("  " + f)
        return 1
    print("PASS")
    return 0
