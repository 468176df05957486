# Sourced by the device session scripts: `step SECONDS TITLE COMMAND...` runs COMMAND (a
# program, not a shell function: timeout runs it) under its own time limit and prints a
# header and a footer with its exit status and duration, so one slow step cannot hide the
# results of the others.
step() {
  local limit=$1 title=$2; shift 2
  echo; echo "=== $title  ($(date -u +%T))"; local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"; local rc=$?
  echo "--- $title: exit $rc, $((SECONDS - t0)) s"
}
