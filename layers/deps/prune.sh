#!/bin/sh
# Remove what never runs in Lambda from an installed site-packages tree (size is a budget:
# 250 MB unzipped for a function plus all its layers).
set -eu
root="$1"
test -d "$root"
# onnxruntime: offline tooling, never imported by InferenceSession.
rm -rf "$root/onnxruntime/transformers" "$root/onnxruntime/quantization" \
	"$root/onnxruntime/tools" "$root/onnxruntime/datasets" "$root/onnxruntime/backend"
# numpy: the Fortran wrapper generator and the test suites.
rm -rf "$root/numpy/f2py" "$root/numpy/tests" "$root/numpy/_core/tests" "$root/numpy/testing/tests"
find "$root/numpy" -type d -name tests -prune -exec rm -rf {} +
# Binaries installed as console scripts (nothing runs them in Lambda).
rm -rf "$root/bin"
# Byte-code the installer may have left: `make build` then compiles all of it with CPython 3.13.
find "$root" -type d -name __pycache__ -prune -exec rm -rf {} +
find "$root" -name '*.pyc' -delete
# Type stubs and typing markers are not needed at run time.
find "$root" -name '*.pyi' -delete
