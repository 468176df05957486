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

# `device_env`: unpack the device kit (.devkit/, when present and not unpacked yet) into
# /tmp/site and export the environment every device script runs with.
device_env() {
  if [ -f .devkit/site-py312.tar.xz ] && [ ! -d /tmp/site/flashinfer ]; then
    mkdir -p /tmp/site && tar -xJf .devkit/site-py312.tar.xz -C /tmp/site \
      && tar -xJf .devkit/flashinfer-aot-sm90a.tar.xz -C /tmp/site
  fi
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 FIBUILD_CACHE_DIR=${FIBUILD_CACHE_DIR:-/tmp/fibuild-cache}
  # NVLink multicast stays off in every process (shared hosts).
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
}
