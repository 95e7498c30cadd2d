"""Load a classifier from safe files only (safetensors or ONNX) and check it can infer. Built for
lab 10's service; lab 09 loads its candidates with it (as lab 10 will serve them), lab 11's
pipeline stages load the champion with it, lab 12's Ray system serves it (`llmlab.system`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmlab.config import pick_device

MAX_TOKENS = 128  # what the model sees; tokens beyond it are truncated
# Known inputs every model must answer before it serves: short, long, digits, non-ASCII.
PROBE_TEXTS = ("hello", "I lost my card yesterday and need a new one", "1234", "café ü 你好")


class ModelCheckError(RuntimeError):
    """A loaded model failed its test inference: it must not serve."""


class Classifier:
    """One loaded model: preprocess (tokenize, truncate) -> infer (logits) -> postprocess."""

    def __init__(
        self,
        tokenizer: Any,
        logits: Callable[[dict[str, np.ndarray]], np.ndarray],
        labels: list[str],
        version: str,
        backend: str,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self.tokenizer = tokenizer
        self.logits = logits
        self.labels = labels
        self.version = version
        self.backend = backend
        self.max_tokens = max_tokens

    def unencodable(self, texts: Sequence[str]) -> list[int]:
        """Positions of the texts the tokenizer cannot encode (e.g. lone UTF-16 surrogates)."""
        try:
            self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)
            return []
        except Exception:  # find which ones: the tokenizer names none
            bad = []
            for index, text in enumerate(texts):
                try:
                    self.tokenizer([text], truncation=True, max_length=self.max_tokens)
                except Exception:
                    bad.append(index)
            return bad

    def preprocess(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids padded to the longest text of the batch, truncated at `max_tokens`."""
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="np",
        )
        return {name: np.asarray(ids, dtype=np.int64) for name, ids in encoded.items()}

    def infer(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Logits, one row per text."""
        return self.logits(features)

    def postprocess(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """Label, confidence, every label's probability and the model version, per text."""
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        return [
            {
                "label": self.labels[int(row.argmax())],
                "score": float(row.max()),
                "probabilities": dict(zip(self.labels, row.tolist(), strict=True)),
                "model_version": self.version,
            }
            for row in probabilities
        ]

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """The three stages in one call."""
        return self.postprocess(self.infer(self.preprocess(texts)))


def check_classifier(classifier: Classifier, expected_labels: Sequence[str] | None = None) -> None:
    """Test inference on `PROBE_TEXTS`: one answer per text, finite probabilities, and the label
    set clients expect (the served model's); raise ModelCheckError otherwise."""
    name = f"model {classifier.version}"
    if expected_labels is not None and list(classifier.labels) != list(expected_labels):
        raise ModelCheckError(f"{name} has labels {classifier.labels}, expected {expected_labels}")
    try:
        outputs = classifier.predict(PROBE_TEXTS)
    except Exception as error:
        raise ModelCheckError(f"{name} cannot infer: {type(error).__name__}") from error
    if len(outputs) != len(PROBE_TEXTS):
        raise ModelCheckError(f"{name} gave {len(outputs)} answers for {len(PROBE_TEXTS)} texts")
    for output in outputs:
        total = sum(output["probabilities"].values())
        if output["label"] not in classifier.labels or not math.isclose(total, 1, abs_tol=1e-3):
            raise ModelCheckError(f"{name} gave an invalid answer: {output['probabilities']}")


def _torch_logits(path: Path, device: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
    model = model.to(device).eval()

    def logits(features: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(ids).to(device) for name, ids in features.items()}
            return model(**inputs).logits.float().cpu().numpy()

    return logits


def _onnx_logits(model_file: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(model_file), providers=onnxruntime.get_available_providers()
    )
    names = [node.name for node in session.get_inputs()]

    def logits(features: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, {name: features[name] for name in names})[0]

    return logits


def load_classifier(
    path: Path, version: str = "local", backend: str = "auto", device: str = "cpu"
) -> Classifier:
    """Load a saved sequence classifier (.safetensors weights or an .onnx file) with its
    tokenizer; pickled `pytorch_model*.bin` weights are refused (unpickling runs code)."""
    from transformers import AutoConfig, AutoTokenizer

    path = Path(path)
    onnx_files = sorted(path.glob("*.onnx"))
    has_torch = any(path.glob("*.safetensors"))
    if backend == "auto":
        backend = "torch" if has_torch else "onnx"
    if backend not in ("torch", "onnx"):
        raise ValueError(f"unknown backend {backend!r}: use auto, torch or onnx")
    if not has_torch and not onnx_files and any(path.glob("pytorch_model*.bin")):
        raise ValueError(
            f"{path} holds only pickled weights (pytorch_model*.bin), which the server refuses:"
            " save with safetensors or export to ONNX"
        )
    if not has_torch and not onnx_files:
        raise FileNotFoundError(f"no model in {path}: neither .safetensors weights nor .onnx")
    if backend == "onnx" and not onnx_files:
        raise FileNotFoundError(f"backend 'onnx' needs an .onnx file in {path}")
    if backend == "torch" and not has_torch:
        raise FileNotFoundError(f"backend 'torch' needs .safetensors weights in {path}")
    config = AutoConfig.from_pretrained(path)
    labels = [config.id2label[index] for index in range(config.num_labels)]
    meta_file = path / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    logits = (
        _torch_logits(path, pick_device(device))
        if backend == "torch"
        else _onnx_logits(onnx_files[0])
    )
    return Classifier(
        AutoTokenizer.from_pretrained(path),
        logits,
        labels,
        version,
        backend,
        # What training used, and never more positions than the model has.
        max_tokens=min(meta.get("max_length", MAX_TOKENS), config.max_position_embeddings),
    )


def resolve_model(reference: str) -> tuple[Path, str]:
    """A model directory (version: its resolved name) or a registry reference NAME@alias or
    NAME/VERSION (version: NAME/VERSION, which the alias points at now)."""
    path = Path(reference)
    if path.is_dir():
        return path, path.resolve().name
    from llmlab import registry

    resolved = registry.resolve(reference)
    return resolved.path, resolved.ref


def load_model(reference: str, backend: str = "auto", device: str = "cpu") -> Classifier:
    """Resolve `reference` (directory or NAME@alias) and load it."""
    path, version = resolve_model(reference)
    return load_classifier(path, version, backend, device)
