#!/usr/bin/env bash
# Install a built wheel in a fresh venv, with no C compiler reachable, and run it.
#
#   tools/check_wheel.sh                                  the wheel of python3 in dist/wheelhouse
#   PYTHONS="python3.9 python3.13" tools/check_wheel.sh   the wheel of each interpreter
#   CHECK_WHEEL_TESTS=1 tools/check_wheel.sh              also run the test suite against it
#
# For each interpreter: a new venv in a temporary directory; PATH is cut down
# to that venv's bin/ (so no cc, gcc or clang can be found, which is checked)
# and CC/CXX point at /bin/false; pip installs the wheel with --only-binary
# :all: (its dependencies, click and croniter, come from the package index as
# wheels).  Then, from a directory outside the source tree: the extension's
# shared-library needs (ldd), an import, sends and reads across two
# processes, an asyncio poll woken by another process's send, `pyqueue
# --version` and `pyqueue topics`.  Run tools/build_wheel.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)

pythons=${PYTHONS:-python3}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' pyqueue/__init__.py)
ldd=$(command -v ldd)

for py in $pythons; do
    tag=$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    wheel=$(ls "$src"/dist/wheelhouse/pyqueue-"$version"-"$tag"-"$tag"-manylinux*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        echo "no manylinux wheel for $tag in dist/wheelhouse: run tools/build_wheel.sh" >&2
        exit 1
    fi
    echo "== $(basename "$wheel")"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$py" -m venv "$work/venv"
    # From here on: only the venv on PATH, and compilers that fail.
    export_env=(env "PATH=$work/venv/bin" "CC=/bin/false" "CXX=/bin/false" "HOME=$work/home")
    cd "$work"

    "${export_env[@]}" python - <<'PY'
import shutil, sys
found = {c: shutil.which(c) for c in ("cc", "gcc", "clang", "c++", "g++")}
assert not any(found.values()), f"a compiler is reachable: {found}"
print("compilers on PATH: none")
PY
    "${export_env[@]}" python -m pip install --quiet --only-binary :all: "$wheel"
    "${export_env[@]}" python -m pip list --format=freeze | grep -i -E '^(pyqueue|click|croniter)=='

    so=$("${export_env[@]}" python -c 'import pyqueue._native as n; print(n.__file__)')
    echo "extension: $so"
    "$ldd" "$so"
    if "$ldd" "$so" | grep -q "not found"; then
        echo "the extension needs a library that is missing" >&2
        exit 1
    fi

    "${export_env[@]}" python - "$work/broker" <<'PY'
import asyncio, os, subprocess, sys
import pyqueue

path = sys.argv[1]
assert not pyqueue.__file__.startswith(os.getcwd() + "/pyqueue"), pyqueue.__file__
print("pyqueue", pyqueue.__version__, "from", os.path.dirname(pyqueue.__file__))
SENDER = ("import sys, pyqueue\n"
          "with pyqueue.open(sys.argv[1]) as b:\n"
          "    print(b.topic('t').send(sys.argv[2].encode()).offset)\n")

async def main():
    with pyqueue.open(path) as broker:
        topic = broker.topic("t", partitions=1)
        r = topic.send(b"hello", key=b"k")
        other = subprocess.run([sys.executable, "-c", SENDER, path, "from another process"],
                               check=True, capture_output=True, text=True)
        print("sent offsets", r.offset, other.stdout.strip())
        print("read", [m.value for m in topic.read(0, 0)])
        c = topic.consumer("g", mode="queue")
        print("polled", [m.value for m in c.poll_batch(10, timeout=1)])
        waiting = asyncio.ensure_future(c.apoll(timeout=60))
        await asyncio.sleep(0)
        sender = await asyncio.create_subprocess_exec(sys.executable, "-c", SENDER, path, "woke the loop",
                                                      stdout=asyncio.subprocess.PIPE)
        msg = await waiting
        out, _ = await sender.communicate()
        assert sender.returncode == 0
        print("apoll got", msg.value, "sent at offset", out.decode().strip())
        c.close()

asyncio.run(main())
PY
    "${export_env[@]}" pyqueue --version
    "${export_env[@]}" pyqueue topics --path "$work/broker"
    "${export_env[@]}" pyqueue demo --quick

    if [ -n "${CHECK_WHEEL_TESTS:-}" ]; then
        echo "== the test suite against the installed wheel"
        "${export_env[@]}" python -m pip install --quiet --only-binary :all: pytest numpy
        cp -r "$src/tests" "$work/tests"
        (cd "$work" && "${export_env[@]}" python -m pytest -q -p no:cacheprovider tests)
    fi

    cd "$src"
    rm -rf "$work"
    trap - EXIT
    echo "== ok: $(basename "$wheel")"
done
