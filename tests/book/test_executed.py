"""The book's executed labs: every lab ran once on the build's profile, passed, and fit its budget.

`make book` executes each lab (Jupyter Book's cache mode) and keeps the executed notebooks under
<build dir>/jupyter_execute and each lab's results (its timing record too) under
<build dir>/results; these tests read them, so CI checks what the reader gets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from llmlab.config import REPO_ROOT
from llmlab.results import build_timings

BUILD = Path(os.environ.get("LLMLAB_BUILD_DIR", REPO_ROOT / "_build"))
PROFILE = os.environ.get("LLMLAB_PROFILE", "cpu")
LAB_BUDGET_S = 300  # a reader's patience per lab on 2 cores (cpu profile)
# And for the whole book: 30 minutes for the eleven labs of the first edition; 40 since labs 11 and
# 12 start real services (a DVC pipeline of six processes, a Ray cluster, Redis) and lab 05 added
# LoRA and sentence pairs. The times are the labs' own records (begin_lab to lab_passed, with the
# load average), the ones `llmlab timings collect` copies into labs/timings.json.
BOOK_BUDGET_S = 2400
TOC_LABS = [
    entry["file"]
    for part in yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())["parts"]
    for entry in part["chapters"]
    if entry["file"].startswith("labs/")
]


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    if not (BUILD / "jupyter_execute").is_dir():
        pytest.fail(f"no executed book in {BUILD}: run `make book` (PROFILE={PROFILE}) first")
    by_number = build_timings(BUILD)
    records = {
        lab: by_number[Path(lab).name[:2]] for lab in TOC_LABS if Path(lab).name[:2] in by_number
    }
    print(f"\nlab wall times ({PROFILE} profile, the labs' records in {BUILD / 'results'}):")
    for lab in TOC_LABS:
        timing = records.get(lab)
        if timing is None:
            print(f"  {lab:<28}     no record")
            continue
        load = f"load {timing['load_start'][0]:.2f} -> {timing['load_end'][0]:.2f}"
        print(f"  {lab:<28} {timing['seconds']:7.1f} s  {load}  {timing['date']}")
    seconds = {lab: timing["seconds"] for lab, timing in records.items()}
    print(f"  {'total':<28} {sum(seconds.get(lab, 0) for lab in TOC_LABS):7.1f} s")
    return seconds


@pytest.mark.parametrize("lab", TOC_LABS)
def test_lab_was_executed_without_errors(lab, timings):
    path = BUILD / "jupyter_execute" / f"{lab}.ipynb"
    assert path.exists(), f"{lab} was not executed into {path.parent}"
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"{lab}: {errors[0]['ename']}: {errors[0]['evalue']}"
    unexecuted = [i for i, c in enumerate(cells) if c.get("execution_count") is None]
    assert not unexecuted, f"{lab}: code cells {unexecuted} never ran"


@pytest.mark.parametrize("lab", TOC_LABS)
def test_lab_passed_its_claims_on_this_profile(lab, timings):
    number = Path(lab).name[:2]
    path = BUILD / "results" / f"lab{number}.json"
    assert path.exists(), f"lab {number} recorded nothing in {path.parent}"
    results = json.loads(path.read_text())
    assert results.get("profile") == PROFILE, f"lab {number} ran under {results.get('profile')}"
    assert results.get("status") == "passed", f"lab {number}: status {results.get('status')}"


@pytest.mark.parametrize("lab", TOC_LABS)
def test_lab_fits_a_readers_patience(lab, timings):
    if PROFILE != "cpu":
        pytest.skip("the time budget is the default (cpu) profile's")
    assert lab in timings, f"{lab}: no timing record in {BUILD / 'results'}"
    assert timings[lab] < LAB_BUDGET_S, f"{lab} took {timings[lab]:.0f} s (budget {LAB_BUDGET_S})"


def test_book_fits_a_readers_patience(timings):
    if PROFILE != "cpu":
        pytest.skip("the time budget is the default (cpu) profile's")
    total = sum(timings.get(lab, 0.0) for lab in TOC_LABS)
    assert total < BOOK_BUDGET_S, f"the labs took {total:.0f} s together (budget {BOOK_BUDGET_S})"
