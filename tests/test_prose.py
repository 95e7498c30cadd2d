"""No measured number typed into a lab's prose: measurements come from the run that renders them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

LABS = sorted((Path(__file__).resolve().parents[1] / "labs").glob("[0-9][0-9]_*.ipynb"))

# What a measurement looks like in prose: a percentage, "3x faster", a duration, a decimal score.
MEASUREMENT = re.compile(
    r"""(?ix)
    (?<![\w.])\d+(?:[.,]\d+)?(?:[–-]\d+(?:[.,]\d+)?)?\s?(?:%|percent\b)
    | (?<![\w.])\d+(?:\.\d+)?(?:[–-]\d+(?:\.\d+)?)?\s?[x×](?!\w)(?!\s*[\d$\\])
    | \b(?:\d+(?:\.\d+)?|two|three|four|five|ten|twenty|a\ hundred)\s+times\s+(?:faster|slower
        |smaller|larger|bigger|more|fewer|less)
    | (?<![\w.])\d+(?:\.\d+)?\s?(?:ms|µs|s|seconds?|min|minutes?|hours?)\b
    | (?<![\w.])\d+(?:\.\d+)?\s?(?:[KMG]i?B)\b
    | (?<![\w.])\d+(?:\.\d+)?\s(?:points?|percentage\ points)\b
    | (?<![\w.])0\.\d{2,}\b
    | (?<![\w.$])\d+\.\d(?![\d.])
    """
)
# Not prose: code spans, math, links' targets (code blocks go line by line, see prose_of).
NOT_PROSE = re.compile(r"`[^`\n]*`|\$\$.*?\$\$|\$[^$]*\$|\]\([^)]*\)", re.S)
FENCE = re.compile(r"^\s*(`{3,}|:{3,})(\S*)")

# Numbers that are not measurements of this run: constants, definitions and settings.
# Confidence levels, named as such (a measured 95 % or 100 % is not allowed anywhere).
EVERYWHERE = (
    "95 % interval",
    "95% interval",
    "95 % confidence",
    "95% confidence",
    "95% bootstrap",
    "95% paired bootstrap",
)
ALLOWED: dict[str, dict[str, str]] = {
    "02": {
        "first 80 %": "the experiment's set-up: a fraction chosen, not measured",
        "and 7.8M at": "arithmetic of the formula just before (2 x V x 128)",
    },
    "03": {
        "Query 0 points along": "'points' is a verb here",
        "already 16 MB of float32": "arithmetic: 2048 x 2048 scores x 4 bytes",
    },
    "04": {
        "last 10 %": "the validation fraction, a setting",
        "take 10 % of": "the exercise's setting",
        "attention is about 18 %": "arithmetic from the formula just above, not a measurement",
        "now 64 % of": "arithmetic from the formula just above, not a measurement",
    },
    "05": {
        "a 90 % confident": "the definition of calibration",
        "come true 90 % of": "the definition of calibration",
    },
    "07": {
        "5–10x the": "pandas' documented rule of thumb for memory, cited, not measured here",
        "would be 100 %": "the definition of perfect scaling",
        "under 100 %. On": "the definition's bound",
        "on 80 GB devices": "a device's memory, a data-sheet figure",
        "dropout 0.1": "the exercise's setting",
    },
    "08": {
        "that is 50 % zeros": "the set-up of the experiment",
        "that is 80 % zeros": "the set-up of the experiment",
        "does 20 % of": "arithmetic on the set-up",
        "4x smaller": "8-bit against 32-bit weights: a definition",
        "at 80 %": "the exercise's setting",
        "80 %-sparse": "the exercise's setting",
        "compute capability 8.0": "a hardware generation's name",
    },
    "09": {
        "same 95% rule": "the gate's confidence level",
        "since PyTorch 2.6": "a version",
    },
    "14": {
        "the last 10 % held out": "lab 04's validation fraction, a setting",
        "first 90 %.": "lab 04's training fraction, a setting",
        "vLLM 0.33.0 requires": "a package's version, not a measurement",
        "the 64 MiB that": "the limit on what can be carried to a GPU machine, a rule",
        "in 80 GB beside": "a device's memory, the exercise's setting",
    },
    "15": {
        "choose 15 % of": "BERT's masking recipe, a setting the lab checks",
        "80 % become": "BERT's masking recipe, a setting",
        "10 % a random": "BERT's masking recipe, a setting",
        "and 10 % stay": "BERT's masking recipe, a setting",
        "predicts 15 % of": "BERT's masking recipe, a setting",
        "four times larger": "the exercise's setting",
        "(0.25, 0.5, 1, 2 old": "the exercise's settings",
    },
    "12": {
        "a 200 MB object store": "the local cluster's setting (object_store_memory)",
    },
    "10": {
        "unluckiest 1%": "the definition of p99",
        "at least 1.5x": "the claim's threshold, a constant of the lab",
        "claim is 3x": "the claim's threshold, a constant of the lab",
        "above 0.25": "the population-stability index's conventional threshold",
        "below 0.1 stable": "the population-stability index's conventional threshold",
        "With 50 ms": "the max_wait setting compared",
        "up to 50 ms": "the max_wait setting compared",
    },
}


def markdown_cells(path: Path) -> list[str]:
    """The source of each markdown cell of a notebook."""
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def prose_of(text: str) -> str:
    """A markdown cell without its code blocks (a directive's body, e.g. a solution, is prose)."""
    kept, fences = [], []  # fences: the open fences, each (marker, is_code)
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and fences and fence.group(1) == fences[-1][0] and not fence.group(2):
            fences.pop()
            continue
        if fence:
            fences.append((fence.group(1), not fence.group(2).startswith("{")))
            continue
        if not any(is_code for _, is_code in fences) and not line.lstrip().startswith(":"):
            kept.append(line)
    return NOT_PROSE.sub(" ", "\n".join(kept))


def typed_in_measurements(lab: str, text: str) -> list[str]:
    """Measurement-like phrases in one markdown cell that the allow-list does not explain."""
    prose = prose_of(text)
    allowed = (*EVERYWHERE, *ALLOWED.get(lab, {}))
    found = []
    for match in MEASUREMENT.finditer(prose):
        context = prose[max(0, match.start() - 25) : match.end() + 25]
        if not any(phrase in context and match.group(0).strip() in phrase for phrase in allowed):
            found.append(" ".join(context.split()))
    return found


@pytest.mark.parametrize("path", LABS, ids=[p.stem for p in LABS])
def test_no_measurement_typed_into_markdown(path):
    lab = path.stem[:2]
    found = [hit for text in markdown_cells(path) for hit in typed_in_measurements(lab, text)]
    assert not found, (
        f"{path.name}: numbers that look measured are typed into markdown (print them from the "
        f"run, glue them, or add a constant to ALLOWED with its reason): {found}"
    )


@pytest.mark.parametrize(
    "text",
    [
        "The int8 model is 2.4x faster than float32.",
        "Accuracy reached 0.83 on the test split.",
        "Always answering positive is right 46 % of the time.",
        "A batch takes about 12 ms on this laptop.",
        "Keras trained more than ten times faster.",
        "```{admonition} Solution\n:class: dropdown\n\nThe model reaches 0.60 here.\n```",
        "The unchanged run takes 30 s.",
        "It finished in 3 min on two cores.",
        "The quantized file is 4.3 MB.",
        "Accuracy rose by 2 points.",
        "The loss fell to 1.5 nats.",
        "The guard caught 100 % of the attacks.",
        "With 95 % of the rows the model is right.",
    ],
)
def test_typed_in_measurements_are_found(text):
    assert typed_in_measurements("99", text)


@pytest.mark.parametrize(
    "text",
    [
        "Set `threshold = 0.83` in code.",
        "The share is $0.465$ by arithmetic.",
        "With 95 % confidence the gap is small.",
        "The 95% bootstrap interval excludes zero.",
        "Use 4 micro-batches of 32 sequences.",
        "```python\nspeedup = 2.4x faster\n```\nCode is not prose.",
    ],
)
def test_constants_code_and_math_pass(text):
    assert not typed_in_measurements("99", text)
