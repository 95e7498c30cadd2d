#!/usr/bin/env bash
# The publishing path as a hosted CI runner takes it: a user who is not root but may `sudo -n`,
# a fresh clone of this checkout's HEAD (commit first), the workflow's set-up (Python 3.11.5+,
# JAVA_HOME of a JDK 17, pip's configuration), make redis/browser/java/npm/install, lab 01 on
# smoke without tools/env.sh (nothing may land in $HOME) and llmlab doctor. Run as root: it makes
# the user. Stops at the first failing step, exits non-zero, prints each step's time and the load.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
user=${NONROOT_USER:-llmlab-ci}
home=/home/$user
clone=$home/llmlab
# pip's cache of this machine's root (downloads and wheels built from sdists), hard-linked for
# the user (no copy; folders its own): what actions/setup-python's pip cache gives a runner.
pip_cache=/var/cache/$user-pip
[ "$(id -u)" = 0 ] || { echo "nonroot-check: run as root (it creates the user $user)"; exit 1; }

rows=()
step() {
  local name=$1 started=$SECONDS result=ok
  shift
  echo "=== $name"
  "$@" || result=FAILED
  rows+=("$(printf '%-14s %-7s %5d s' "$name" "$result" $((SECONDS - started)))")
  if [ "$result" != ok ]; then summary; exit 1; fi
}
summary() {
  echo "=== nonroot-check timings (load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores)"
  printf '%s\n' "${rows[@]}"
}

make_user() {
  command -v sudo >/dev/null || { apt-get update -qq && apt-get install -y -qq sudo >/dev/null; }
  id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
  echo "$user ALL=(ALL) NOPASSWD:ALL" >"/etc/sudoers.d/$user"
  chmod 440 "/etc/sudoers.d/$user"
  visudo -cqf "/etc/sudoers.d/$user"
}

share_pip_cache() {
  local cache
  cache=$(python3 -m pip cache dir) && rm -rf "$pip_cache" && mkdir -p "$pip_cache" &&
    cp -al "$cache/." "$pip_cache/" && find "$pip_cache" -type d -exec chown "$user:" {} + &&
    du -sh "$pip_cache"
}

# setup-python's stand-in: this machine's python3.11 (requirements.lock needs 3.11.5 or later;
# Debian 12's own is 3.11.2), hard-linked where the user may run it (its libpython is found
# through LD_LIBRARY_PATH).
python_home=/opt/$user-python
share_python() {
  local prefix
  prefix=$(python3.11 -c 'import sys; print(sys.base_prefix)') || return 1
  if [ "$prefix" = /usr ] || [ "$prefix" = /usr/local ]; then
    python_home=$prefix
  else
    rm -rf "$python_home" && cp -al "$prefix" "$python_home" || return 1
  fi
  as_user "python3.11 -V && command -v python3.11"
}

# What the workflow's set-up steps give the runner: setup-python's python3.11 on PATH,
# setup-java's JAVA_HOME, and here this machine's pip configuration (its package mirrors).
java_home=$(command -v java >/dev/null && dirname "$(dirname "$(readlink -f "$(command -v java)")")")
pip_config=$(python3 -m pip config debug 2>/dev/null | sed -n 's/^  \(.*pip.conf\), exists: True$/\1/p' |
  grep "^$HOME" | tail -1)
as_user() {
  runuser -u "$user" -- env -i HOME="$home" USER="$user" LANG=C.UTF-8 TERM=dumb \
    PATH="${USER_PATH:-$python_home/bin:/usr/local/bin:/usr/bin:/bin}" JAVA_HOME="$java_home" \
    LD_LIBRARY_PATH="$python_home/lib" \
    PIP_CACHE_DIR="$pip_cache" PIP_FIND_LINKS="${PIP_FIND_LINKS:-}" PIP_CERT="${PIP_CERT:-}" \
    PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}" PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /bin/bash -c "cd '$clone' 2>/dev/null || cd; $*"
}

fresh_clone() {
  rm -rf "$clone"
  if [ -n "$pip_config" ]; then
    install -D -o "$user" -m 644 "$pip_config" "$home/.config/pip/pip.conf"
  fi
  # --no-local: the clone's files are copies, not hard links to the checkout's, so chown is safe.
  git clone --quiet --no-local "$repo" "$clone" && chown -R "$user:" "$clone" &&
    as_user "git log -1 --format='%h %s' | cut -c1-100"
}

# `make redis` with redis-server hidden from PATH: the recipe finds no redis-server, is not root
# and goes through `sudo -n apt-get install` for real (already installed here: apt changes nothing).
sudo_path() {
  local hidden=$home/path-without-redis
  as_user "sudo -n true" || { echo "sudo -n does not work for $user"; return 1; }
  rm -rf "$hidden" && mkdir -p "$hidden"
  for tool in id sudo env sed head; do ln -s "$(command -v $tool)" "$hidden/"; done
  USER_PATH=$hidden as_user "/usr/bin/make --no-print-directory redis" | tee "$home/sudo-path.log"
  grep -q "installing Debian's redis-server package (sudo -n apt-get)" "$home/sudo-path.log"
}

# Lab 01 as a reader runs it, without sourcing tools/env.sh: $HOME must not change.
lab_01() {
  local listing=/tmp/$user-home
  as_user "find ~ -path ~/llmlab -prune -o -print | sort" >"$listing.before"
  as_user ".venv/bin/llmlab run 01 --profile smoke --out _build/nonroot-run" || return 1
  as_user "find ~ -path ~/llmlab -prune -o -print | sort" >"$listing.after"
  diff "$listing.before" "$listing.after" || { echo "lab 01 wrote the files above into \$HOME"; return 1; }
}

step user make_user
step pip-cache share_pip_cache
step python share_python
step clone fresh_clone
step sudo-path sudo_path
step redis as_user "make --no-print-directory redis"
step browser as_user "make --no-print-directory browser"
step java as_user "make --no-print-directory java"
step npm as_user "make --no-print-directory npm"
# This machine's package mirrors lack some projects: pip warns once per project; not shown.
step install as_user "make --no-print-directory install 2>&1 | grep -v \"^WARNING: Location '\" ; \\
  [ -f .venv/.installed ] && du -sh .venv"
step lab-01 lab_01
step doctor as_user ".venv/bin/llmlab doctor"
summary
