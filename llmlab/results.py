"""What a lab measured: JSON for papermill reruns and the pipeline, glue for the book."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from llmlab.config import PROFILES, REPO_ROOT, build_dir, data_dir, profile_build_dir

# Wall time of each lab per profile, copied from the lab's own record of a run (begin_lab to
# lab_passed) by `llmlab run --save-timings` or `llmlab timings collect`, never typed in.
TIMINGS_PATH = REPO_ROOT / "labs" / "timings.json"
# What every committed timing must carry: where, when and on which code it was measured.
TIMING_FIELDS = ("seconds", "profile", "commit", "machine", "load_start", "load_end", "date")
# Two runs of the same lab at different loads differ by this much without any change in work:
# a smoke run slower than a cpu run by less needs no reason.
RUN_NOISE = 0.10


def results_path(lab: str) -> Path:
    """JSON file holding lab `lab`'s recorded values."""
    path = build_dir() / "results" / f"lab{lab}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _plain(value: Any) -> Any:
    """Convert numpy/torch scalars to JSON-ready Python values."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"refusing to record a non-finite value: {value}")
    return value


def _write_json(path: Path, values: dict[str, Any]) -> None:
    """Write `values` as sorted JSON through a temporary file, so readers never see half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def record(lab: str, **values: Any) -> dict[str, Any]:
    """Merge `values` into lab `lab`'s results file; glue each as `lab<NN>_<name>` for MyST."""
    path = results_path(lab)
    current = json.loads(path.read_text()) if path.exists() else {}
    plain = {name: _plain(value) for name, value in values.items()}
    current.update(plain)
    _write_json(path, current)
    _glue(lab, plain)
    return current


def load_results(lab: str) -> dict[str, Any]:
    """Read what lab `lab` recorded; fail clearly if it has not run."""
    path = results_path(lab)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `llmlab run {lab}` first")
    return json.loads(path.read_text())


class UpstreamLabError(RuntimeError):
    """A lab's input comes from an earlier lab that has not passed under this profile."""


class ProfileMismatchError(RuntimeError):
    """A build dir holds one profile's outputs; a run under another profile must use its own."""


def data_fingerprint() -> str:
    """SHA-256 of the shipped data files' current contents: the data a lab's outputs belong to."""
    from llmlab.data import SHIPPED_FILES, sha256_file

    digest = hashlib.sha256()
    for name in sorted(SHIPPED_FILES):
        path = data_dir() / name
        digest.update(f"{name}:{sha256_file(path) if path.exists() else 'missing'}\n".encode())
    return digest.hexdigest()


def claim_build_dir(profile: str) -> Path:
    """Mark the build dir as `profile`'s; refuse one that holds another profile's outputs."""
    stamp = build_dir() / "PROFILE"
    owner = stamp.read_text().strip() if stamp.exists() else profile
    if owner != profile:
        own = profile_build_dir(profile)
        raise ProfileMismatchError(
            f"{build_dir()} holds the {owner!r} profile's outputs and a {profile!r} run would mix "
            f"them: use `llmlab run NN --profile {profile}` (it writes to {own}) or set "
            f"LLMLAB_BUILD_DIR={own} before starting Jupyter"
        )
    stamp.write_text(profile + "\n")
    return build_dir()


def begin_lab(lab: str, profile: str) -> None:
    """Start a fresh results file for lab `lab`: until lab_passed(), later labs refuse it."""
    claim_build_dir(profile)
    started = {
        "epoch": time.time(),
        "load": _load_average(),
        "executed_by": os.environ.get("LLMLAB_EXECUTED_BY", "a Jupyter kernel"),
    }
    _write_json(
        results_path(lab),
        {
            "profile": profile,
            "status": "running",
            "data_fingerprint": data_fingerprint(),
            "run_started": started,
        },
    )


def lab_passed(lab: str, timing_reason: str | None = None) -> None:
    """Mark lab `lab`'s run as passed and record (and glue) its wall time since begin_lab.

    `timing_reason` states why this run may take longer than a bigger profile's (e.g. work that
    only the smaller profile does); the timings test asks for one when smoke outlasts cpu."""
    results = load_results(lab)
    started = results.get("run_started")
    if started is None:
        raise RuntimeError(f"lab {lab} called lab_passed without begin_lab: no start to time from")
    timing = {
        "seconds": round(time.time() - started["epoch"], 1),
        "profile": results["profile"],
        "commit": git_commit(lab),
        "machine": machine(),
        "load_start": started["load"],
        "load_end": _load_average(),
        "date": dt.datetime.fromtimestamp(started["epoch"], dt.UTC).isoformat(timespec="seconds"),
        "executed_by": started["executed_by"],
    }
    if timing_reason:
        timing["reason"] = timing_reason
    results.update(status="passed", timing=timing)
    _write_json(results_path(lab), results)
    _glue(lab, {"status": "passed"})
    _glue_timing(lab, timing)


def require_lab(lab: str, profile: str) -> dict[str, Any]:
    """What lab `lab` recorded, if its last run passed under `profile`; else one clear error."""
    path = results_path(lab)
    rerun = f"run `llmlab run {lab} --profile {profile}` first"
    if not path.exists():
        raise UpstreamLabError(f"lab {lab} has not run in {path.parent.parent}: {rerun}")
    results = json.loads(path.read_text())
    if results.get("profile") != profile:
        raise UpstreamLabError(
            f"lab {lab} last ran under profile {results.get('profile')!r}, not {profile!r}: {rerun}"
        )
    if results.get("data_fingerprint") != data_fingerprint():
        raise UpstreamLabError(
            f"lab {lab} last ran on other data (the shipped files changed since): {rerun}"
        )
    if results.get("status") != "passed":
        raise UpstreamLabError(
            f"lab {lab}'s last run under {profile!r} did not pass (status "
            f"{results.get('status', 'unknown')!r}), so its outputs cannot be trusted: {rerun}"
        )
    return results


def _glue(lab: str, values: dict[str, Any]) -> None:
    """Expose values to the book through myst-nb's glue when running inside a kernel."""
    try:
        from IPython import get_ipython
        from myst_nb import glue
    except ImportError:
        return
    if get_ipython() is None:
        return
    for name, value in values.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        glue(f"lab{lab}_{name}", shown, display=False)


def _load_average() -> list[float]:
    """The system's 1-, 5- and 15-minute load averages (how busy the cores were)."""
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine a timing is taken on: CPU cores, CPU model and the GPU (None without one)."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cores": os.cpu_count(), "cpu": _cpu_model(), "gpu": gpu}


def machine_description(described: dict[str, Any]) -> str:
    """{"cores": 2, "cpu": "Xeon", "gpu": None} -> '2 CPU cores (Xeon)', the GPU first if any."""
    cores = f"{described['cores']} CPU cores ({described['cpu']})"
    return f"{described['gpu']}, {cores}" if described.get("gpu") else cores


def git_commit(lab: str) -> str:
    """HEAD's commit, plus "-dirty" if the lab or the package differs from it; else "unknown"."""
    paths = [str(path) for path in (REPO_ROOT / "labs").glob(f"{lab}_*.ipynb")]
    git = ["git", "-C", str(REPO_ROOT)]
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", *paths, str(REPO_ROOT / "llmlab")],
            capture_output=True,
            text=True,
        )
    except OSError:  # no git on this machine
        return "unknown"
    if head.returncode != 0:  # not a git checkout, e.g. an unpacked archive
        return "unknown"
    return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")


def _glue_timing(lab: str, timing: dict[str, Any]) -> None:
    """Glue this run's wall time, profile, machine, commit and load for the page's header."""
    _glue(
        lab,
        {
            "run_profile": timing["profile"],
            "run_machine": machine_description(timing["machine"]),
            "run_commit": timing["commit"][:12] + ("-dirty" if "dirty" in timing["commit"] else ""),
            "run_date": timing["date"][:10],
        },
    )
    _glue_raw(
        lab,
        {
            "wall_s": timing["seconds"],
            "load_start": timing["load_start"][0],
            "load_end": timing["load_end"][0],
        },
    )


def _glue_raw(lab: str, values: dict[str, float]) -> None:
    """Glue numbers unformatted, so a page formats them itself ({glue:text}`key:.0f`)."""
    try:
        from IPython import get_ipython
        from myst_nb import glue
    except ImportError:
        return
    if get_ipython() is not None:
        for name, value in values.items():
            glue(f"lab{lab}_{name}", value, display=False)


def check_timing(timing: dict[str, Any]) -> None:
    """Refuse a timing that lacks a field of TIMING_FIELDS or has a nonsense value."""
    missing = [field for field in TIMING_FIELDS if field not in timing]
    if missing:
        raise ValueError(f"a timing record lacks {missing}: {timing}")
    if timing["profile"] not in PROFILES:
        raise ValueError(f"unknown profile {timing['profile']!r}; expected one of {PROFILES}")
    seconds = timing["seconds"]
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a lab's wall time must be positive, got {seconds}")


def save_timing(lab: str, timing: dict[str, Any], source: str, path: Path | None = None) -> None:
    """Store a run's own timing record (from lab_passed) as lab `lab`'s time on its profile."""
    path = path or TIMINGS_PATH
    check_timing(timing)
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings.setdefault(lab, {})[timing["profile"]] = {**timing, "source": source}
    _write_json(path, timings)


def passed_timing(lab: str, since: float | None = None) -> dict[str, Any]:
    """The timing lab `lab` recorded in this build dir when it last passed (after `since`)."""
    results = load_results(lab)
    if results.get("status") != "passed" or "timing" not in results:
        raise ValueError(
            f"lab {lab}'s last run in {results_path(lab).parent} did not pass "
            f"(status {results.get('status')!r}): no timing to save"
        )
    if since is not None and results["run_started"]["epoch"] < since:
        raise ValueError(f"lab {lab}'s timing predates this run: did it call begin_lab?")
    return results["timing"]


def build_timings(build: Path) -> dict[str, dict[str, Any]]:
    """Each passed lab's timing record in build dir `build`, by lab number."""
    timings = {}
    for results_file in sorted((build / "results").glob("lab[0-9][0-9].json")):
        results = json.loads(results_file.read_text())
        if results.get("status") == "passed" and "timing" in results:
            timings[results_file.stem.removeprefix("lab")] = results["timing"]
    return timings


def collect_timings(build: Path, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Copy every passed lab's timing record from `build`'s results into labs/timings.json."""
    collected = build_timings(build)
    for lab, timing in collected.items():
        save_timing(lab, timing, f"llmlab timings collect --build-dir {build}", path)
    return collected


def is_sourced(timing: dict[str, Any]) -> bool:
    """Whether a committed timing carries every field of TIMING_FIELDS (older entries did not)."""
    try:
        check_timing(timing)
    except ValueError:
        return False
    return True


def timing_problems(timings: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """What the timings test refuses: unsourced entries, smoke slower than cpu unexplained."""
    problems = [
        f"lab {lab} {profile}: no source record (lacks {[f for f in TIMING_FIELDS if f not in t]})"
        for lab, profiles in sorted(timings.items())
        for profile, t in profiles.items()
        if not is_sourced(t)
    ]
    for lab, profiles in sorted(timings.items()):
        smoke, cpu = profiles.get("smoke"), profiles.get("cpu")
        if smoke and cpu and smoke["seconds"] > cpu["seconds"] * (1 + RUN_NOISE):
            if not (smoke.get("reason") or cpu.get("reason")):
                problems.append(
                    f"lab {lab}: smoke took {smoke['seconds']} s, more than cpu's "
                    f"{cpu['seconds']} s by over {RUN_NOISE:.0%}, and no run states a reason "
                    "(lab_passed's timing_reason)"
                )
    return problems


def drop_unsourced(path: Path | None = None) -> list[str]:
    """Remove the entries of labs/timings.json that lack a source record; return which."""
    path = path or TIMINGS_PATH
    timings = json.loads(path.read_text()) if path.exists() else {}
    dropped = [
        f"{lab} {p}" for lab, ps in timings.items() for p, t in ps.items() if not is_sourced(t)
    ]
    kept = {
        lab: {p: t for p, t in ps.items() if is_sourced(t)} for lab, ps in sorted(timings.items())
    }
    _write_json(path, {lab: ps for lab, ps in kept.items() if ps})
    return dropped


def _duration(seconds: float) -> str:
    """90.4 -> '1 min 30 s'; 3725 -> '1 h 2 min'."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def lab_timings(lab: str, path: Path | None = None) -> Any:
    """A table of lab `lab`'s recorded wall time per profile (earlier runs, for its page header)."""
    import pandas as pd

    path = path or TIMINGS_PATH
    measured = json.loads(path.read_text()).get(lab, {}) if path.exists() else {}
    empty = {"wall time": "not measured yet", "machine": "", "load average": "", "measured on": ""}
    rows = {profile: empty for profile in PROFILES}
    for profile, timing in measured.items():
        if not is_sourced(timing):  # typed in before runs recorded themselves: not shown
            continue
        rows[profile] = {
            "wall time": _duration(timing["seconds"]),
            "machine": machine_description(timing["machine"]),
            "load average": f"{timing['load_start'][0]:.2f} -> {timing['load_end'][0]:.2f}",
            "measured on": f"{timing['date'][:10]}, commit {timing['commit'][:12]}"
            + (" (uncommitted changes)" if "dirty" in timing["commit"] else ""),
        }
    return pd.DataFrame(rows).T.rename_axis(f"llmlab run {lab} --profile")
