# Environment for every llmlab command: keep tool state inside the build dir, not $HOME.
# Sourced by the Makefile; the `llmlab` command applies the same list (tools/env.list) itself.
_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export LLMLAB_BUILD_DIR="${LLMLAB_BUILD_DIR:-$_root/_build}"
while read -r _name _op _value; do
  case "$_name" in '' | '#'*) continue ;; esac
  [ "$_op" = "?=" ] && [ -n "$(printenv "$_name")" ] && continue
  case "$_value" in '{build}/'*) mkdir -p "${_value/\{build\}/$LLMLAB_BUILD_DIR}" ;; esac
  export "$_name=${_value/\{build\}/$LLMLAB_BUILD_DIR}"
done <"$_root/tools/env.list"
unset _root _name _op _value
