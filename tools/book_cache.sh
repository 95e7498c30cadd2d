#!/usr/bin/env bash
# Usage: book_cache.sh CACHE_DIR. Jupyter Book re-executes a lab only when its code cells change;
# what the labs import (the package, the pins, the data) and the profile can change too. Empty
# the execution cache when any of them differs from the last build, so no page shows numbers
# computed by old code, then record the new key.
set -euo pipefail
cache=$1
key=$( { echo "profile=${LLMLAB_PROFILE:-cpu}"
         find llmlab data pyproject.toml requirements.lock -type f ! -name '*.pyc' -print0 \
           | sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)
if [ -d "$cache" ] && [ "$(cat "$cache.key" 2>/dev/null)" != "$key" ]; then
  echo "book: package, pins, data or profile changed since the last build: re-executing every lab"
  rm -rf "$cache"
fi
mkdir -p "$(dirname "$cache")"
echo "$key" > "$cache.key"
