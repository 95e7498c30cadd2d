"""What a lab measured: JSON for papermill reruns and the pipeline, glue for the book."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from llmlab.config import PROFILES, REPO_ROOT, build_dir, data_dir, profile_build_dir

# Wall time of each lab per profile, written by `llmlab run --save-timings` and shown on each
# lab's page; committed, so the book quotes measured times, never guessed ones.
TIMINGS_PATH = REPO_ROOT / "labs" / "timings.json"


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
    _write_json(
        results_path(lab),
        {"profile": profile, "status": "running", "data_fingerprint": data_fingerprint()},
    )


def lab_passed(lab: str) -> None:
    """Mark lab `lab`'s run as passed: every claim held, so later labs may use its outputs."""
    record(lab, status="passed")


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


def machine_description() -> str:
    """The machine a timing was taken on: CPU cores and, when present, the GPU."""
    import torch

    cores = f"{os.cpu_count()} CPU cores"
    return f"{torch.cuda.get_device_name()}, {cores}" if torch.cuda.is_available() else cores


def save_timing(
    lab: str, profile: str, seconds: float, machine: str, path: Path | None = None
) -> None:
    """Store the wall time of one successful run of lab `lab` (e.g. "01") under `profile`."""
    path = path or TIMINGS_PATH
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a lab's wall time must be positive, got {seconds}")
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings.setdefault(lab, {})[profile] = {
        "seconds": round(seconds, 1),
        "machine": machine,
        "date": dt.date.today().isoformat(),
    }
    _write_json(path, timings)


def _duration(seconds: float) -> str:
    """90.4 -> '1 min 30 s'; 3725 -> '1 h 2 min'."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def lab_timings(lab: str, path: Path | None = None) -> Any:
    """A table of lab `lab`'s measured wall time per profile (for the header of its page)."""
    import pandas as pd

    path = path or TIMINGS_PATH

    measured = json.loads(path.read_text()).get(lab, {}) if path.exists() else {}
    rows = {
        profile: {
            "wall time": _duration(measured[profile]["seconds"]),
            "machine": measured[profile]["machine"],
            "measured on": measured[profile]["date"],
        }
        if profile in measured
        else {"wall time": "not measured yet", "machine": "", "measured on": ""}
        for profile in PROFILES
    }
    return pd.DataFrame(rows).T.rename_axis(f"llmlab run {lab} --profile")
