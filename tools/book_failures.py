"""Print, for each notebook the book failed to execute, the failing line and its error: the few
lines a CI log's tail needs to say which claim broke (the full tracebacks are in `reports`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summary(log: Path, width: int = 600) -> list[str]:
    """The failing source line (marked `---->`) and the last line of the error in `log`."""
    lines = [ANSI.sub("", line).rstrip() for line in log.read_text(errors="replace").splitlines()]
    failing = [line.strip() for line in lines if line.lstrip().startswith("--->")]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    out = [f"FAILED {log.with_suffix('').with_suffix('').name}:"]
    out += [f"  at {failing[-1][:width]}"] if failing else []
    out += [f"  {errors[-1][:width]}"] if errors else ["  (no error line; see the log)"]
    return out + [f"  full traceback: {log}"]


def main(reports: str) -> None:
    """Summarise every `*.err.log` under `reports`."""
    for log in sorted(Path(reports).rglob("*.err.log")):
        print("\n".join(summary(log)))


if __name__ == "__main__":
    main(sys.argv[1])
