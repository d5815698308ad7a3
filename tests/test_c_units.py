"""The C core's own tests (tests/c, and the fuzz harness replaying its seeds),
built with CMake in a temporary directory and run by ctest, so that the
default `pytest` runs them too.

One pytest test per ctest test, so a failure names the native file at fault;
ctest's output (each program prints one line per test case, then
"N passed, M failed") is in the assertion message.  Skipped, with the reason,
only when there is no cmake or no C compiler to build with.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
C_TESTS = sorted("c_" + p.stem[len("test_") :] for p in (ROOT / "tests" / "c").glob("test_*.c"))
CTEST_NAMES = C_TESTS + ["fuzz_segment_replay"]


def _missing_toolchain() -> Optional[str]:
    for tool in ("cmake", "ctest"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    cc = os.environ.get("CC")
    if cc:
        if shutil.which(cc.split()[0]) is None:
            return f"the C compiler CC={cc!r} is not on PATH"
    elif not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        return "no C compiler (cc, gcc or clang) is on PATH"
    if shutil.which("ninja") is None and shutil.which("make") is None:
        return "neither make nor ninja is on PATH"
    return None


def _run(cmd: list[str], cwd: Optional[Path] = None, timeout: float = 300) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd)} exited with {r.returncode}:\n{out[-20000:]}"
    return out


@pytest.fixture(scope="module")
def cmake_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _missing_toolchain()
    if reason:
        pytest.skip(f"the C unit tests need cmake and a C compiler: {reason}")
    build = tmp_path_factory.mktemp("cmake-build")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=RelWithDebInfo", *generator])
    _run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)])
    return build


def test_every_c_test_is_registered_with_ctest(cmake_build: Path) -> None:
    out = _run(["ctest", "-N"], cwd=cmake_build)
    listed = sorted(re.findall(r"Test\s+#\d+:\s+(\S+)", out))
    assert listed == sorted(CTEST_NAMES)


@pytest.mark.parametrize("name", CTEST_NAMES)
def test_ctest(cmake_build: Path, name: str) -> None:
    cmd = ["ctest", "-R", f"^{name}$", "--output-on-failure", "--no-tests=error", "--timeout", "240"]
    r = subprocess.run(cmd, cwd=cmake_build, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"ctest {name} failed:\n{r.stdout[-20000:]}\n{r.stderr[-5000:]}"
