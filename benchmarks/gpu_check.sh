#!/usr/bin/env bash
# Everything a first GPU window should check, in one command, in under 8 minutes on one H100 / H200:
#   1. install: `pip install -e ".[test]"`, except that a torch already here (a CUDA build on a GPU machine) is
#      kept: then the package goes in without dependencies and only the missing ones are installed
#   2. the `cuda` tests (tests/test_cuda.py: bf16 / fp16 steps, dense loss, bit-exact resume, torch.compile,
#      NCCL, peak memory)
#   3. benchmarks/gpu_check.py: Base steps of image, speech and text (v1, v2, eager, compiled) against the
#      Hugging Face reference step, with MFU, into one Markdown table
# Each part has its share of the time and prints where it stands as it goes.
#
#   bash benchmarks/gpu_check.sh                     # on a GPU machine; writes runs/gpu_check.md (+ .json, .tests.log)
#   bash benchmarks/gpu_check.sh --out FILE.md
#   bash benchmarks/gpu_check.sh --dry-run           # tiny sizes on the CPU (the test suite runs this)
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=""
OUT="runs/gpu_check.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run" ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--out FILE.md]"; exit 2 ;;
  esac
  shift
done

# a dry run is a CPU run even on a GPU machine (its cuda tests are then skipped, as in CI)
[ -n "$DRY" ] && export CUDA_VISIBLE_DEVICES=""
PY="${PYTHON:-python}"
TOTAL=450  # seconds for all three parts; 30 s to spare under the 8 minutes
INSTALL_MAX=120
TESTS_MAX=180
# bit-exact comparisons of two GPU runs need deterministic cuBLAS workspaces, set before any CUDA work
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
export PYTHONUNBUFFERED=1
START=$SECONDS
say() { echo "[gpu_check $((SECONDS - START))s] $*"; }

# ---------------------------------------------------------------------------------------------- 1. install
say "1/3 install"
mkdir -p "$(dirname "$OUT")"
PIPLOG="${OUT%.md}.install.log"
# what is missing, read from the installed packages' metadata (nothing imported: seconds saved)
missing() {
  "$PY" - <<'EOF'
import importlib.util, re
from importlib.metadata import PackageNotFoundError, version
text = open("pyproject.toml").read()
try:
    import tomllib  # Python 3.11+
    project = tomllib.loads(text)["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["test"]
except ModuleNotFoundError:  # Python 3.10: the quoted items of the two lists
    lists = re.findall(r"^(?:dependencies|test) = \[(.*?)\]", text, re.DOTALL | re.MULTILINE)
    specs = [item for body in lists for item in re.findall(r'"([^"]+)"', re.sub(r"#.*", "", body))]
for spec in specs:
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
    try:
        version(name)
    except PackageNotFoundError:
        print("torch" if name == "torch" else spec.split("#")[0].strip())
if importlib.util.find_spec("data2vec") is None:
    print("data2vec")
EOF
}
MISSING=$(missing)
if echo "$MISSING" | grep -qx torch; then
  say "no torch here: pip install -e .[test] (output: $PIPLOG)"
  timeout "$INSTALL_MAX" "$PY" -m pip install -e ".[test]" >>"$PIPLOG" 2>&1 || { say "pip install -e .[test] failed"; exit 1; }
elif [ -n "$MISSING" ]; then
  # keep the torch that is here (a CUDA build on a GPU machine): the package without dependencies, then the
  # dependencies it lacks, torch left out
  say "keeping torch $("$PY" -c 'from importlib.metadata import version; print(version("torch"))'); installing: $(echo $MISSING)"
  if echo "$MISSING" | grep -qx data2vec; then
    timeout "$INSTALL_MAX" "$PY" -m pip install --no-deps --no-build-isolation -e . >>"$PIPLOG" 2>&1 \
      || { say "pip install -e . failed: src/ goes on PYTHONPATH"; export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; }
  fi
  DEPS=$(echo "$MISSING" | grep -vx data2vec)
  [ -z "$DEPS" ] || timeout "$INSTALL_MAX" "$PY" -m pip install $DEPS >>"$PIPLOG" 2>&1 || say "could not install: $(echo $DEPS)"
fi
STILL=$(missing)  # data2vec on PYTHONPATH counts as present
[ -z "$STILL" ] || { say "still missing: $(echo $STILL)"; exit 1; }
say "torch $("$PY" -c 'from importlib.metadata import version; print(version("torch"))'), data2vec and the test dependencies present"

# ---------------------------------------------------------------------------------------------- 2. cuda tests
say "2/3 cuda tests (at most ${TESTS_MAX} s)"
LOG="${OUT%.md}.tests.log"
timeout "$TESTS_MAX" "$PY" -m pytest -m cuda tests/test_cuda.py -v -p no:cacheprovider -o addopts="" -rfE \
  --durations=5 2>&1 | tee "$LOG"
STATUS=${PIPESTATUS[0]}
SUMMARY=$(grep -E "(passed|failed|skipped|error|no tests ran).* in [0-9.]+s" "$LOG" | tail -n 1 | tr -d '=' | xargs)
[ "$STATUS" = 124 ] && SUMMARY="stopped after ${TESTS_MAX} s; ${SUMMARY:-no summary} (log: $LOG)"
say "cuda tests: ${SUMMARY:-no summary, see $LOG}"

# ---------------------------------------------------------------------------------------------- 3. benchmarks
BUDGET=$((TOTAL - (SECONDS - START) - 20))
[ "$BUDGET" -lt 60 ] && BUDGET=60
say "3/3 benchmarks (budget ${BUDGET} s)"
timeout $((BUDGET + 20)) "$PY" benchmarks/gpu_check.py $DRY --out "$OUT" --budget "$BUDGET" \
  --tests "${SUMMARY:-no summary} (log: $LOG)"
BENCH=$?
[ "$BENCH" = 124 ] && say "benchmarks stopped at the time limit; the table holds the rows measured before it"
echo
cat "$OUT" 2>>"$PIPLOG" 2>&1
say "done in $((SECONDS - START)) s: $OUT"
[ "$STATUS" = 0 ] && [ "$BENCH" = 0 ]
