"""What a lab measured: JSON for papermill reruns and the pipeline, glue for the book."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmlab.config import build_dir


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


def record(lab: str, **values: Any) -> dict[str, Any]:
    """Merge `values` into lab `lab`'s results file; glue each as `lab<NN>_<name>` for MyST."""
    path = results_path(lab)
    current = json.loads(path.read_text()) if path.exists() else {}
    plain = {name: _plain(value) for name, value in values.items()}
    current.update(plain)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    tmp.replace(path)
    _glue(lab, plain)
    return current


def load_results(lab: str) -> dict[str, Any]:
    """Read what lab `lab` recorded; fail clearly if it has not run."""
    path = results_path(lab)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `llmlab run {lab}` first")
    return json.loads(path.read_text())


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
