# Sourced by docs/repro_*.sh: the runs directory, the seeds, and `run DIR ARGS...`, which
# trains `python -m jaxlab.main --workdir=DIR ARGS...` unless DIR already has results.json
# (so an interrupted sweep resumes where it stopped), or unless ONLY (an extended regular
# expression) is set and DIR does not match it: ONLY picks arms out of a script.
set -euo pipefail
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-"0 1 2"}
run() { local dir=$1; shift
  if [ -n "${ONLY:-}" ] && ! [[ "$dir" =~ $ONLY ]]; then return 0; fi
  [ -f "$dir/results.json" ] || python -m jaxlab.main --workdir="$dir" "$@" > /dev/null; }
