"""The pipeline's stages, one command each: `python -m llmlab.stages STAGE --timeout S`.

DVC runs them (dvc.yaml) in a workspace whose params.yaml names the profile, seed, gates, the
feedback file and the build folder; each stage reads its inputs from the build folder and
writes its outputs there, so DVC can hash both and skip a stage whose inputs did not change.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

MODEL_NAME = "classifier"
LOG_ENV = "LLMLAB_STAGE_LOG"  # a JSON-lines file each stage appends its report to
# Size of the classifier each profile trains: a small BERT on the packaged MiniLM tokenizer,
# trained from scratch (the stages show the pipeline, the labs show how to train well).
SIZES = {
    "smoke": {"hidden_size": 32, "layers": 1, "epochs": 3},
    "cpu": {"hidden_size": 64, "layers": 2, "epochs": 4},
    "gpu": {"hidden_size": 256, "layers": 4, "epochs": 6},
}


class StageTimeout(RuntimeError):
    """A stage ran past its time limit."""


def load_params(path: Path = Path("params.yaml")) -> dict[str, Any]:
    """The workspace's parameters (params.yaml in the folder DVC runs the stage in)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.resolve()} is missing: run the stages through `dvc repro`")
    return yaml.safe_load(path.read_text())


def file_md5(path: Path) -> str:
    """MD5 of a file's bytes: the hash DVC 3 records for it (in a .dvc file or dvc.lock)."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def build(params: dict[str, Any]) -> Path:
    """The build folder the stages write into."""
    return Path(params["build"])


def _write(path: Path, values: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2) + "\n")


def stage_data(params: dict[str, Any]) -> str:
    """Check and clean the feedback file; write hash-stable train/validation/test splits."""
    from llmlab import data

    source = Path(params["feedback"])
    frame = pd.read_csv(source)
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"{source} lacks the column(s) {sorted(missing)}")
    unknown = sorted(set(frame.label) - set(data.LABELS))
    if unknown:
        raise ValueError(f"{source} has labels {unknown}; expected {data.LABELS}")
    cleaned, report = data.clean(frame[["text", "label"]])
    splits = data.stable_split(cleaned)
    out = build(params) / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        split.to_csv(out / f"{name}.csv", index=False)
    manifest = data.data_manifest(splits, source="feedback")
    manifest |= {"data_version": file_md5(source), "file": str(source), "cleaning": report}
    _write(out / "manifest.json", manifest)
    return f"{report['rows_out']} rows, data version {manifest['data_version'][:8]}"


def _splits(params: dict[str, Any]) -> dict[str, pd.DataFrame]:
    folder = build(params) / "data"
    return {name: pd.read_csv(folder / f"{name}.csv") for name in ("train", "validation", "test")}


def stage_train(params: dict[str, Any]) -> str:
    """Train the profile's small classifier on the train split; save it with safetensors."""
    import torch
    from torch.utils.data import StackDataset
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from llmlab import data
    from llmlab.config import seed_everything
    from llmlab.text import pretrained_model_dir
    from llmlab.train import TrainConfig, classification_loss, shuffled_batches
    from llmlab.train import train as fit

    seed_everything(int(params["seed"]))
    # One thread: these classifiers' matrices are too small to split between cores, and on a
    # shared machine a second thread waits for a busy core (the loop ran faster on one).
    torch.set_num_threads(1)
    size, train = SIZES[params["profile"]], params["train"]
    labels = data.LABELS
    config = BertConfig(
        hidden_size=size["hidden_size"],
        num_hidden_layers=size["layers"],
        num_attention_heads=2,
        intermediate_size=2 * size["hidden_size"],
        max_position_embeddings=train["max_length"],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    tokenizer = AutoTokenizer.from_pretrained(pretrained_model_dir())
    model = BertForSequenceClassification(config)
    frame = _splits(params)["train"]
    encoded = tokenizer(
        frame.text.tolist(),
        truncation=True,
        max_length=train["max_length"],
        padding="max_length",
        return_tensors="pt",
    )
    targets = torch.tensor([labels.index(label) for label in frame.label])
    rows = StackDataset(
        input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], labels=targets
    )
    steps = size["epochs"] * (len(frame) // train["batch_size"])
    config = TrainConfig(
        max_steps=steps,
        lr=float(train["lr"]),
        warmup_steps=max(1, steps // 10),
        log_every=max(1, steps // 5),
        device="cpu",
        seed=int(params["seed"]),
        progress=False,
    )
    batches = shuffled_batches(rows, train["batch_size"], seed=int(params["seed"]))
    result = fit(model, batches, config, loss_fn=classification_loss)
    loss = result.history["train_loss"].dropna().iloc[-1]
    out = build(params) / "model"
    model.eval().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return f"{len(frame)} rows, {size['epochs']} epochs ({steps} steps), last loss {loss:.3f}"


def _predict(model_dir: Path, texts: list[str], backend: str = "auto") -> list[str]:
    from llmlab.serving.classifier import load_classifier

    classifier = load_classifier(model_dir, backend=backend)
    return [
        answer["label"]
        for start in range(0, len(texts), 64)
        for answer in classifier.predict(texts[start : start + 64])
    ]


def stage_evaluate(params: dict[str, Any]) -> str:
    """Macro-F1 on the test split with a 95% interval; fail below the quality gate."""
    from llmlab.metrics import bootstrap_interval, classification_metrics
    from llmlab.registry import make_evaluation

    test = _splits(params)["test"]
    texts, labels = test.text.tolist(), test.label.tolist()
    predicted = _predict(build(params) / "model", texts)
    scores = classification_metrics(labels, predicted)
    interval = bootstrap_interval(labels, predicted, "macro_f1", seed=int(params["seed"]))
    gate = float(params["gates"]["min_macro_f1"])
    scores |= {"macro_f1_interval": [interval["low"], interval["high"]], "gate": gate}
    _write(build(params) / "evaluation.json", scores)
    if interval["low"] < gate:
        raise RuntimeError(
            f"quality gate: test macro-F1 {scores['macro_f1']:.3f} (95% interval "
            f"{interval['low']:.3f}-{interval['high']:.3f} on {len(texts)} sentences) does not "
            f"clear gates.min_macro_f1={gate:.3f}; nothing downstream runs"
        )
    _write(build(params) / "predictions.json", make_evaluation(texts, labels, predicted))
    return f"macro-F1 {scores['macro_f1']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def stage_compress(params: dict[str, Any]) -> str:
    """Export to ONNX, quantize the weights to int8; fail if it disagrees with the original."""
    import shutil

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModelForSequenceClassification

    source, out = build(params) / "model", build(params) / "compressed"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model = AutoModelForSequenceClassification.from_pretrained(source, use_safetensors=True)
    length = model.config.max_position_embeddings
    names = ["input_ids", "attention_mask"]
    dummy = {name: torch.ones(1, length, dtype=torch.long) for name in names}
    fp32 = out / "fp32.onnx.tmp"
    torch.onnx.export(
        model.eval(),
        (dummy["input_ids"], dummy["attention_mask"]),
        str(fp32),
        input_names=names,
        output_names=["logits"],
        dynamic_axes={name: {0: "batch", 1: "tokens"} for name in dummy},
        dynamo=False,
    )
    quantize_dynamic(str(fp32), str(out / "model.onnx"), weight_type=QuantType.QInt8)
    fp32.unlink()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    for extra in source.glob("special_tokens_map.json"):
        shutil.copy(extra, out / extra.name)
    test = _splits(params)["test"].text.tolist()
    original = json.loads((build(params) / "predictions.json").read_text())["predictions"]
    agreement = sum(
        a == b for a, b in zip(_predict(out, test, "onnx"), original, strict=True)
    ) / len(test)
    minimum = float(params["compress"]["min_agreement"])
    _write(build(params) / "compression.json", {"agreement": agreement, "minimum": minimum})
    if agreement < minimum:
        raise RuntimeError(
            f"the int8 model agrees with the original on {agreement:.1%} of the test sentences, "
            f"below compress.min_agreement={minimum:.1%}"
        )
    return f"int8 ONNX agrees with the original on {agreement:.1%} of {len(test)} test rows"


def stage_register(params: dict[str, Any]) -> str:
    """Register the compressed candidate with its lineage; promote it through the gate."""
    from llmlab import registry

    uri = f"sqlite:///{Path(params['registry']).resolve()}/mlflow.db"
    Path(params["registry"]).mkdir(parents=True, exist_ok=True)
    manifest = json.loads((build(params) / "data" / "manifest.json").read_text())
    scores = json.loads((build(params) / "evaluation.json").read_text())
    evaluation = json.loads((build(params) / "predictions.json").read_text())
    lineage = registry.make_lineage(
        manifest["hash"],
        {"profile": params["profile"], "seed": params["seed"], **params["train"]},
        data_version=manifest["data_version"],
        data_file=manifest["file"],
    )
    metrics = {"macro_f1": scores["macro_f1"], "accuracy": scores["accuracy"]}
    version = registry.register(
        build(params) / "compressed", MODEL_NAME, metrics, lineage, uri, evaluation
    )
    outcome: dict[str, Any] = {"version": version, "data_version": manifest["data_version"]}
    try:
        registry.promote(
            MODEL_NAME,
            version,
            metric="macro_f1",
            tolerance=float(params["gates"]["tolerance"]),
            uri=uri,
        )
    except registry.PromotionRefused as refused:
        champion = registry.resolve(f"{MODEL_NAME}@champion", uri).version
        raise RuntimeError(
            f"promotion gate: {refused} (version {champion} stays champion and keeps serving)"
        ) from None
    outcome["champion"] = registry.resolve(f"{MODEL_NAME}@champion", uri).version
    _write(build(params) / "registered.json", outcome)
    return f"{MODEL_NAME}/{version} registered and promoted to champion"


def stage_serve_check(params: dict[str, Any]) -> str:
    """Serve the champion on 127.0.0.1; check it answers, batches and refuses bad input."""
    import httpx

    from llmlab.serving.manager import BackgroundServer

    registered = json.loads((build(params) / "registered.json").read_text())
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(params['registry']).resolve()}/mlflow.db"
    os.environ["LLMLAB_BUILD_DIR"] = str(build(params).resolve())
    texts = _splits(params)["test"].text.head(int(params["serve"]["requests"])).tolist()
    with BackgroundServer(f"{MODEL_NAME}@champion") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            empty = client.post("/predict", json={"text": ""}).status_code
            answers = [client.post("/predict", json={"text": text}) for text in texts]
            batch = client.post("/predict", json={"texts": texts})
    failed = sorted({a.status_code for a in [*answers, batch] if a.status_code != 200})
    if empty != 422 or failed:
        raise RuntimeError(f"service check: empty text -> {empty} (want 422), failures {failed}")
    served = answers[0].json()["predictions"][0]["model_version"]
    if served != f"{MODEL_NAME}/{registered['champion']}":
        raise RuntimeError(f"the service answers with {served}, not champion {registered}")
    _write(build(params) / "service.json", {"served": served, "requests": len(texts) + 2})
    return f"{len(texts) + 2} requests answered by {served}"


STAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "data": stage_data,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "compress": stage_compress,
    "register": stage_register,
    "serve-check": stage_serve_check,
}


def _time_out(name: str, seconds: int) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        raise StageTimeout(f"stage {name!r} ran past its timeout of {seconds} s")

    return handler


def main(argv: list[str] | None = None) -> int:
    """Run one stage with a time limit; print one line: what it did, or why it failed."""
    parser = argparse.ArgumentParser(prog="python -m llmlab.stages", description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--timeout", type=int, required=True, help="seconds before it fails")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGALRM, _time_out(args.stage, args.timeout))
    signal.alarm(args.timeout)
    started = time.perf_counter()
    try:
        status, summary = "ok", STAGES[args.stage](load_params())
    except Exception as error:  # one clear line for the log; DVC then stops the pipeline
        status, summary = "failed", f"{type(error).__name__}: {error}"
    finally:
        signal.alarm(0)
    seconds = time.perf_counter() - started
    line = f"stage {args.stage!r} {status} in {seconds:.1f} s: {summary}"
    print(line, file=sys.stderr if status == "failed" else sys.stdout)
    if os.environ.get(LOG_ENV):  # the driver (llmlab.pipeline.repro) collects the stage reports
        entry = {"stage": args.stage, "status": status, "seconds": seconds, "summary": summary}
        with open(os.environ[LOG_ENV], "a") as log:
            log.write(json.dumps(entry) + "\n")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    code = main()
    # The stage is done and its files are closed: spare the exiting interpreter its garbage
    # collection over every object torch and transformers made (over a second a stage).
    gc.freeze()
    sys.exit(code)
