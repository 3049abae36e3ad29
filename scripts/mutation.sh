#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules users' numbers come from; on demand, not in CI.
#   bash scripts/mutation.sh                 # every module, from scratch (deletes mutants/)
#   bash scripts/mutation.sh quantify stats  # some modules, reusing mutants/ and its stats
#   bash scripts/mutation.sh --fresh geometry  # some modules, from scratch
#   bash scripts/mutation.sh --table         # only print the table of the last results
# Modules: geometry quantify metrics stats postprocess lungs (see scripts/mutation_table.py).
# The tests run per mutant are the unit-test files in [tool.mutmut] of pyproject.toml.
# Prints and writes the per-module table to mutants/table.md (mutants/ is git-ignored).
# MUTATION_JOBS (default: the CPU count) sets how many mutants run at once. docs/mutation.md
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUTF8=1
JOBS="${MUTATION_JOBS:-$(nproc)}"

table() { "$PY" scripts/mutation_table.py table --out mutants/table.md; }

if [ "${1:-}" = "--table" ]; then
  table
  exit 0
fi

fresh=0
if [ "${1:-}" = "--fresh" ]; then
  fresh=1
  shift
fi
[ "$#" -gt 0 ] || fresh=1

pin="$(grep -o 'mutmut==[0-9.]*' pyproject.toml | head -n 1)"
if [ "$("$PY" -m pip show mutmut 2>/dev/null | sed -n 's/^Version: //p')" != "${pin#mutmut==}" ]; then
  echo "mutation: installing the mutation extra ($pin)"
  "$PY" -m pip install --quiet -e ".[test,mutation]"
fi

patterns_text="$("$PY" scripts/mutation_table.py patterns "$@")"  # checks the names
mapfile -t patterns <<< "$patterns_text"
if [ "$fresh" = 1 ]; then
  rm -rf mutants  # a full run starts clean: mutmut never refreshes its copy of unmutated files
fi

start=$(date +%s)
# mutmut redraws a progress line per mutant: keep its messages and the verdicts but those.
set +e
"$PY" -m mutmut run --max-children "$JOBS" "${patterns[@]}" | stdbuf -oL tr '\r' '\n' \
  | grep --line-buffered -v -e '^\s*$' -e '^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]' -e '^🎉'
rc=${PIPESTATUS[0]}
set -e
echo "mutation: mutmut ran in $(( $(date +%s) - start )) s (exit code $rc)"
[ "$rc" -eq 0 ] || exit "$rc"
table
