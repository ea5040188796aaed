#!/usr/bin/env bash
# VNN-COMP tool interface: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Nothing to convert: the verifier reads ONNX and VNN-LIB directly. Check the arguments and that the tool runs.
set -euo pipefail
if [ "$#" -ne 4 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
onnx=$3
vnnlib=$4
for f in "$onnx" "$vnnlib"; do
    if [ ! -f "$f" ]; then
        echo "$0: $f: no such file" >&2
        exit 1
    fi
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
verify="$here/../.venv/bin/verify"
[ -x "$verify" ] || verify=$(command -v verify) || { echo "$0: the verify command is not installed" >&2; exit 1; }
"$verify" --help > /dev/null
