#!/usr/bin/env bash
# Download, here, the wheels that tools/gpu_bench.sh needs on a GPU machine that has PyTorch and
# transformers but no internet (Python 3.12, x86-64): pydantic and its parts, soundfile (+ cffi),
# soxr and websockets. They go to .whl/ (git-ignored through .git/info/exclude); carry that folder.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 websockets==17.4
ls -l .whl
