"""The `llmlab` command: check the set-up, run labs with papermill."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import NoReturn

from llmlab.config import PROFILES, REPO_ROOT, pick_device, resolve_profile
from llmlab.environment import apply_environment
from llmlab.runner import execute_lab, use_profile

LABS_DIR = REPO_ROOT / "labs"
RUNS_DIR = REPO_ROOT / "runs"
KEY_PACKAGES = (
    "torch",
    "tensorflow-cpu",
    "keras",
    "transformers",
    "tokenizers",
    "jupyter-book",
    "papermill",
    "nbval",
    "wandb",
    "mlflow",
    "onnxruntime",
    "fastapi",
    "pyspark",
)


def lab_paths() -> list[Path]:
    """Every lab notebook, in order."""
    return sorted(LABS_DIR.glob("[0-9][0-9]_*.ipynb"))


def find_lab(lab: str) -> Path:
    """Resolve '1', '01', '01_standardization' or a path to a lab notebook."""
    if Path(lab).suffix == ".ipynb" and Path(lab).exists():
        return Path(lab).resolve()
    prefix = lab.zfill(2) if lab.isdigit() else lab
    matches = [p for p in lab_paths() if p.stem == prefix or p.stem.startswith(prefix + "_")]
    if len(matches) != 1:
        known = ", ".join(p.stem for p in lab_paths())
        raise LookupError(f"no single lab matches {lab!r}; labs: {known}")
    return matches[0]


def parse_value(text: str) -> object:
    """Read a -p value as JSON (numbers, true/false, null, lists), else keep it as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run(
    lab: str,
    profile: str | None,
    param: list[list[str]],
    out: Path | None,
    save_timings: bool = False,
) -> int:
    """Execute a lab (or all of them) with papermill; the executed notebook lands under runs/."""
    from papermill.exceptions import PapermillExecutionError

    from llmlab.results import passed_timing, save_timing

    chosen = resolve_profile(profile)
    parameters = {key: parse_value(value) for key, value in param}
    if save_timings and parameters:
        raise ValueError("--save-timings records default runs only: drop the -p parameters")
    notebooks = lab_paths() if lab == "all" else [find_lab(lab)]
    out_dir = out or RUNS_DIR / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    build = use_profile(chosen)
    for notebook in notebooks:
        print(f"running {notebook.stem} (profile={chosen}, build dir {build}) -> {out_dir}")
        started, started_epoch = time.perf_counter(), time.time()
        try:
            execute_lab(notebook, chosen, parameters, out_dir)
        except PapermillExecutionError as error:
            print(
                f"{notebook.stem} failed in cell {error.exec_count}: {error.ename}: {error.evalue}",
                file=sys.stderr,
            )
            print(
                f"executed notebook with the traceback: {out_dir / notebook.name}", file=sys.stderr
            )
            return 1
        print(f"{notebook.stem} took {time.perf_counter() - started:.0f} s (with kernel start-up)")
        if save_timings:
            # The lab's own record (begin_lab to lab_passed, with commit, machine and load).
            timing = passed_timing(notebook.stem[:2], since=started_epoch)
            save_timing(notebook.stem[:2], timing, "llmlab run --save-timings")
            print(f"labs/timings.json: {notebook.stem} {timing['seconds']} s on {chosen}")
    print("all labs passed" if lab == "all" else f"{notebooks[0].stem} passed")
    return 0


def timings(args: argparse.Namespace) -> int:
    """Copy the timing records of the labs that passed in a build dir into labs/timings.json."""
    from llmlab.config import build_dir
    from llmlab.results import TIMINGS_PATH, collect_timings, drop_unsourced, timing_problems

    build = args.build_dir or build_dir()
    collected = collect_timings(build)
    if not collected:
        raise FileNotFoundError(f"no passed lab with a timing record in {build / 'results'}")
    for lab, timing in collected.items():
        print(f"lab {lab}: {timing['seconds']:7.1f} s on {timing['profile']} ({timing['date']})")
    if args.drop_unsourced:
        for entry in drop_unsourced():
            print(f"dropped lab {entry}: no source record")
    problems = timing_problems(json.loads(TIMINGS_PATH.read_text()))
    if problems:
        print("labs/timings.json has what tests/test_timings.py refuses:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def doctor() -> int:
    """Check the set-up (system tools, pins, disk, tool state), then print versions and data."""
    import torch

    from llmlab import data
    from llmlab.config import build_dir
    from llmlab.doctor import report, system_checks

    problems = report(system_checks(build_dir()))
    print(f"machine      {platform.machine()}, {os.cpu_count()} CPU cores")
    for package in KEY_PACKAGES:
        print(f"{package:<12} {_version(package)}")
    device = pick_device("auto")
    print(f"device       {device}")
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"gpu          {props.name} ({props.total_memory / 2**30:.0f} GiB)")
    print(f"profile      {resolve_profile()}")
    for name, status in data.check_all().items():
        print(f"data         {name}: {status}")
        problems += status != "ok"
    return 1 if problems else 0


def lab(jupyter_args: list[str]) -> NoReturn:
    """Become JupyterLab on labs/ with this environment's kernel (a signal then reaches it)."""
    use_profile(resolve_profile())  # kernels write to the profile's build dir
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={LABS_DIR}"]
    if os.geteuid() == 0:  # containers and CI machines often run as root
        command.append("--allow-root")
    os.execv(sys.executable, command + jupyter_args)


def serve(args: argparse.Namespace) -> int:
    """Serve a registered classifier over HTTP (FastAPI + uvicorn) until interrupted."""
    import uvicorn

    from llmlab.serving.app import create_app
    from llmlab.serving.state import ServeConfig

    config = ServeConfig(
        model=args.model,
        challenger=args.challenger,
        challenger_fraction=args.challenger_fraction,
        backend=args.backend,
        device=args.device,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        timeout_s=args.timeout_s,
        prediction_log=args.prediction_log,
        index_dir=args.index,
        embedding_model=args.embedding_model,
    )
    try:
        app = create_app(config)
    except (OSError, ValueError) as error:  # e.g. an index built by another embedding model
        print(f"llmlab serve: {error}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def pipeline(args: argparse.Namespace) -> int:
    """`dvc repro` of dvc.yaml in a workspace of its own (made on first use); exit 1 on failure."""
    from llmlab.config import profile_build_dir
    from llmlab.pipeline import PipelineFailed, init_workspace, repro

    profile = resolve_profile(args.profile)
    workspace = args.workspace or profile_build_dir(profile) / "pipeline-workspace"
    if not (workspace / "dvc.yaml").exists():
        print(f"new pipeline workspace {workspace} (profile={profile})")
        init_workspace(workspace, profile=profile)
    try:
        table = repro(workspace, force=args.force)
    except PipelineFailed as failure:
        print(failure.table.to_string())
        print(str(failure), file=sys.stderr)
        return 1
    print(table.to_string())
    return 0


def add_lab_options(parser: argparse.ArgumentParser) -> None:
    """--profile, -p KEY VALUE and --out: how labs are executed."""
    parser.add_argument("--profile", choices=PROFILES, help="default: $LLMLAB_PROFILE or cpu")
    parser.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="override a parameter of the lab's parameters cell, e.g. -p seed 3",
    )
    parser.add_argument("--out", type=Path, help="output folder (default runs/<time>)")


def serve_lm(options: list[str]) -> int:
    """Stream a GPT's tokens over HTTP (server-sent events): lab 14's generation service."""
    from llmlab.serving import generate

    parser = argparse.ArgumentParser(prog="llmlab serve-lm", description=generate.__doc__)
    generate.add_arguments(parser)
    return generate.serve(parser.parse_args(options))


def build_parser() -> argparse.ArgumentParser:
    """The `llmlab` command line: one sub-command per task."""
    parser = argparse.ArgumentParser(prog="llmlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="execute a lab (or 'all') with papermill")
    run_parser.add_argument("lab", help="lab number or name (1, 01, 01_standardization) or 'all'")
    add_lab_options(run_parser)
    run_parser.add_argument(
        "--save-timings",
        action="store_true",
        help="copy each lab's own timing record (begin_lab to lab_passed) to labs/timings.json",
    )
    run_parser.set_defaults(handler=lambda a: run(a.lab, a.profile, a.param, a.out, a.save_timings))
    timings_parser = commands.add_parser("timings", help="labs/timings.json from the labs' records")
    timings_commands = timings_parser.add_subparsers(dest="timings_command", required=True)
    collect_parser = timings_commands.add_parser(
        "collect", help="copy the timings of the labs that passed in a build dir (e.g. make book's)"
    )
    collect_parser.add_argument(
        "--build-dir", type=Path, help="default: $LLMLAB_BUILD_DIR, else _build (the cpu book's)"
    )
    collect_parser.add_argument(
        "--drop-unsourced",
        action="store_true",
        help="also remove entries without a source record (typed in before runs recorded them)",
    )
    collect_parser.set_defaults(handler=timings)
    doctor_parser = commands.add_parser(
        "doctor", help="system tools, pins, disk, tool state, versions, device, data"
    )
    doctor_parser.set_defaults(handler=lambda a: doctor())
    lab_parser = commands.add_parser(
        "lab", help="open JupyterLab on the labs; extra arguments go to jupyter lab"
    )
    lab_parser.set_defaults(handler=lambda a: lab(a.jupyter_args))
    serve_parser = commands.add_parser("serve", help="serve a classifier over HTTP")
    serve_parser.add_argument("--model", required=True, help="NAME@alias, or a model directory")
    serve_parser.add_argument(
        "--challenger", help="second model for A/B tests, e.g. NAME@challenger"
    )
    serve_parser.add_argument("--challenger-fraction", type=float, default=0.0)
    serve_parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")
    serve_parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    serve_parser.add_argument(
        "--max-batch-size", type=int, default=32, help="1 turns dynamic batching off"
    )
    serve_parser.add_argument("--max-wait-ms", type=float, default=5.0)
    serve_parser.add_argument("--timeout-s", type=float, default=10.0)
    serve_parser.add_argument("--prediction-log", type=Path, help="append predictions as JSONL")
    serve_parser.add_argument(
        "--index", type=Path, help="a saved vector index (lab 15): also serve POST /similar"
    )
    serve_parser.add_argument(
        "--embedding-model", type=Path, help="what built the index (default: the packaged MiniLM)"
    )
    serve_parser.set_defaults(handler=serve)
    lm_parser = commands.add_parser(
        "serve-lm",
        add_help=False,
        help="stream a GPT's tokens over HTTP (lab 14); --help lists its options",
    )
    lm_parser.set_defaults(handler=lambda a: serve_lm(a.jupyter_args))
    pipeline_parser = commands.add_parser(
        "pipeline", help="dvc repro of dvc.yaml: data -> train -> ... -> serve-check"
    )
    pipeline_parser.add_argument("--profile", choices=PROFILES, help="size of a new workspace")
    pipeline_parser.add_argument(
        "--workspace", type=Path, help="DVC workspace (default: <build dir>/pipeline-workspace)"
    )
    pipeline_parser.add_argument("--force", action="store_true", help="rerun every stage")
    pipeline_parser.set_defaults(handler=pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmlab` command: tools/env.sh's settings first, then the command."""
    apply_environment()  # before any tool is imported: its state goes into the build dir
    args, extra = build_parser().parse_known_args(argv)
    if extra and args.command not in ("lab", "serve-lm"):
        build_parser().error(f"unrecognized arguments: {' '.join(extra)}")
    args.jupyter_args = extra
    try:
        return args.handler(args)
    except (LookupError, ValueError, FileNotFoundError) as error:
        print(f"llmlab: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
