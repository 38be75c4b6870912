# Sourced by docs/repro_*.sh: the runs directory, the seeds, and `run DIR ARGS...`, which
# trains `python -m jaxlab.main --workdir=DIR ARGS...` unless DIR already has results.json
# (so an interrupted sweep resumes where it stopped).
set -euo pipefail
RUNS=${RUNS:-runs}
SEEDS=${SEEDS:-"0 1 2"}
run() { local dir=$1; shift
  [ -f "$dir/results.json" ] || python -m jaxlab.main --workdir="$dir" "$@" > /dev/null; }
