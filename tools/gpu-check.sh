#!/usr/bin/env bash
# `make gpu-check` on a bare GPU machine without network, in one command:
#
#   bash tools/gpu-check.sh OUT_DIR [--quick] [--device cuda|cpu] [-- --checks NAME...]
#
# Uses the python3 on PATH (or $PYTHON) as it is: installs from .whl/ (`make gpu-wheels`) only
# the packages of tools/gpu-wheels.txt that this Python lacks, into a folder of its own (never
# into its site-packages), puts the repository on PYTHONPATH (no `pip install -e`), keeps tool
# state in the build dir, not $HOME, and runs every check of llmlab.gpucheck with its time
# budget (after `--`, arguments for llmlab.gpucheck: `-- --checks generation` reruns one check).
# Writes OUT_DIR/report.json and OUT_DIR/gpu-check.log, prints the table.
# Exit code: llmlab.gpucheck's (0 every claim held, 1 a check failed, 2 no CUDA GPU), 3 when the
# packages cannot be installed or imported, 124 when the whole run outlasts GPU_CHECK_TIMEOUT_S.
set -uo pipefail

usage() {
  echo "usage: $0 OUT_DIR [--quick] [--device cuda|cpu] [-- --checks NAME...]" >&2
  exit 64
}

# Which pinned packages this Python lacks (pip resolves against what is installed), then those
# wheels, and nothing else, into $site.
install_missing() {
  local wanted plan
  wanted=$(sed -e '/# fallback/d' -e 's/#.*//' "$root/tools/gpu-wheels.txt" | xargs)
  plan=$LLMLAB_BUILD_DIR/gpu-wheels-plan.json
  rm -rf "$site" && mkdir -p "$site"
  "$python" -m pip --version >/dev/null || { echo "gpu-check: $python has no pip"; return 3; }
  # shellcheck disable=SC2086  # one requirement a word
  "$python" -m pip install --quiet --dry-run --no-index --find-links "$root/.whl" \
    --report "$plan" $wanted || {
    echo "gpu-check: .whl/ lacks a wheel this Python needs: run \`make gpu-wheels\` and carry .whl"
    return 3
  }
  local wheels
  mapfile -t wheels < <("$python" -c '
import json, sys
from urllib.parse import unquote, urlparse
for item in json.load(open(sys.argv[1]))["install"]:
    print(unquote(urlparse(item["download_info"]["url"]).path))
' "$plan")
  if [ ${#wheels[@]} = 0 ]; then
    echo "gpu-check: this Python has every pinned package"
    return 0
  fi
  echo "gpu-check: installing what this Python lacks: ${wheels[*]##*/}"
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" \
    "${wheels[@]}" || return 3
}

run() {
  local started=$SECONDS status
  echo "gpu-check: $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  install_missing || return 3
  echo "gpu-check: packages ready in $((SECONDS - started)) s"
  # The import chain of the server subprocess (the service), before any check runs.
  "$python" -c 'import fastapi, uvicorn, llmlab.serving.app, llmlab.cli' || {
    echo "gpu-check: an import failed (above); the pinned wheels are in tools/gpu-wheels.txt"
    return 3
  }
  timeout --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-540}" "$python" -m llmlab.gpucheck \
    --out "$out/report.json" --device "$device" ${quick[@]+"${quick[@]}"} ${extra[@]+"${extra[@]}"}
  status=$?
  [ $status = 124 ] && echo "gpu-check: timed out; $out/report.json holds the checks that finished"
  echo "gpu-check: exit $status after $((SECONDS - started)) s; report $out/report.json"
  return $status
}

[ $# -ge 1 ] || usage
out=$1
shift
device=cuda
quick=()
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=(--quick) ;;
    --device) [ $# -ge 2 ] || usage; device=$2; shift ;;
    --device=*) device=${1#*=} ;;
    --) shift; extra=("$@"); break ;;
    *) usage ;;
  esac
  shift
done
case $device in cuda | cpu) ;; *) usage ;; esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out" && out=$(cd "$out" && pwd)
export LLMLAB_BUILD_DIR=${LLMLAB_BUILD_DIR:-$root/_build/gpu-check}
# shellcheck source=tools/env.sh
. "$root/tools/env.sh"
home=$LLMLAB_BUILD_DIR/home
export TRITON_CACHE_DIR=$home/triton TORCHINDUCTOR_CACHE_DIR=$home/inductor
export XDG_CACHE_HOME=$home/cache TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# Only .whl/ is read: no pip configuration of this machine, no index, no cache in $HOME.
export PIP_CONFIG_FILE=/dev/null PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
site=$LLMLAB_BUILD_DIR/site-packages
export PYTHONPATH=$root:$site${PYTHONPATH:+:$PYTHONPATH}

run 2>&1 | tee "$out/gpu-check.log"
exit "${PIPESTATUS[0]}"
