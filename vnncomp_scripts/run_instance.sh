#!/usr/bin/env bash
# VNN-COMP tool interface: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Writes RESULTS_FILE: sat (with the counterexample) / unsat / unknown / timeout. The verifier gets the timeout
# minus START_MARGIN seconds (Python and torch start-up) so that it answers before the harness stops it.
# VERIFY_DEVICE (default cpu): the torch device of the search (cuda on a GPU machine; see verify --help).
set -uo pipefail
START_MARGIN=2
if [ "$#" -ne 6 ] || [ "$1" != "v1" ]; then
    echo "usage: $0 v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 1
fi
onnx=$3
vnnlib=$4
results=$5
timeout=$6
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
verify="$here/../.venv/bin/verify"
[ -x "$verify" ] || verify=$(command -v verify) || { echo "$0: the verify command is not installed" >&2; exit 1; }
budget=$(awk -v t="$timeout" -v m="$START_MARGIN" 'BEGIN { b = t - m; if (b < 1) b = 1; print b }')
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
rm -f "$results"  # an earlier run's answer must not stand for this one
"$verify" "$onnx" --vnnlib "$vnnlib" --timeout "$budget" --result-file "$results" --device "${VERIFY_DEVICE:-cpu}"
status=$?
if [ "$status" -ne 0 ] && [ ! -s "$results" ]; then
    echo "unknown" > "$results"  # an error: say nothing rather than something wrong
fi
exit "$status"
