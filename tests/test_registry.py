import shutil
from pathlib import Path

import pytest

from llmlab import modelcard, registry


@pytest.fixture(scope="session")
def empty_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its tables created once (the migrations take seconds)."""
    path = tmp_path_factory.mktemp("registry-template") / "mlflow.db"
    registry._client(f"sqlite:///{path}").search_registered_models()
    return path


@pytest.fixture
def uri(empty_database: Path, tmp_path: Path) -> str:
    """A fresh sqlite registry for one test."""
    database = tmp_path / "registry" / "mlflow.db"
    database.parent.mkdir()
    shutil.copy(empty_database, database)
    return f"sqlite:///{database}"


def model_dir(root: Path, weights: str) -> Path:
    """A tiny stand-in for a saved model directory."""
    path = root / f"model-{weights}"
    path.mkdir()
    (path / "weights.txt").write_text(weights)
    return path


def register(uri: str, root: Path, weights: str, accuracy: float, parent=None) -> int:
    lineage = registry.make_lineage("hash-" + weights, {"lr": 0.1, "weights": weights}, parent)
    return registry.register(model_dir(root, weights), "clf", {"accuracy": accuracy}, lineage, uri)


def test_versions_are_numbered_and_never_lost(uri, tmp_path):
    numbers = [register(uri, tmp_path, w, acc) for w, acc in [("a", 0.8), ("b", 0.7), ("c", 0.9)]]
    assert numbers == [1, 2, 3]
    listed = registry.versions("clf", uri)
    assert [v.version for v in listed] == [1, 2, 3]
    assert [(v.path / "weights.txt").read_text() for v in listed] == ["a", "b", "c"]
    assert [v.metrics["accuracy"] for v in listed] == [0.8, 0.7, 0.9]
    assert all(Path(uri.removeprefix("sqlite:///")).parent in v.path.parents for v in listed)


def test_resolve_returns_files_and_exact_lineage(uri, tmp_path):
    first = register(uri, tmp_path, "a", 0.8)
    second = register(uri, tmp_path, "b", 0.85, parent=f"clf/{first}")
    found = registry.resolve(f"models:/clf/{second}", uri)
    assert (found.path / "weights.txt").read_text() == "b"
    assert found.lineage["parent"] == "clf/1"
    assert found.lineage["data_hash"] == "hash-b"
    assert found.lineage["config"] == {"lr": 0.1, "weights": "b"}
    assert found.lineage["code_version"] == registry.code_version()


def test_promotion_gate_refuses_a_worse_model(uri, tmp_path):
    good = register(uri, tmp_path, "a", 0.8)
    worse = register(uri, tmp_path, "b", 0.7)
    registry.promote("clf", good, "champion", uri=uri)
    with pytest.raises(registry.PromotionRefused, match="worse"):
        registry.promote("clf", worse, "champion", uri=uri)
    assert registry.resolve("clf@champion", uri).version == good
    better = register(uri, tmp_path, "c", 0.9)
    registry.promote("clf", better, "champion", uri=uri)
    assert registry.resolve("clf@champion", uri).aliases == ["champion"]
    assert registry.resolve("clf@champion", uri).version == better


def test_gate_direction_for_a_loss(uri, tmp_path):
    lineage = registry.make_lineage("h", {})
    low = registry.register(model_dir(tmp_path, "a"), "lm", {"loss": 1.0}, lineage, uri)
    high = registry.register(model_dir(tmp_path, "b"), "lm", {"loss": 2.0}, lineage, uri)
    registry.promote("lm", low, metric="loss", higher_is_better=False, uri=uri)
    with pytest.raises(registry.PromotionRefused):
        registry.promote("lm", high, metric="loss", higher_is_better=False, uri=uri)


def test_rollback_restores_the_previous_champion(uri, tmp_path):
    first = register(uri, tmp_path, "a", 0.8)
    second = register(uri, tmp_path, "b", 0.9)
    with pytest.raises(LookupError, match="no earlier holder"):
        registry.rollback("clf", "champion", uri)
    registry.promote("clf", first, uri=uri)
    registry.promote("clf", second, uri=uri)
    assert registry.rollback("clf", "champion", uri) == first
    assert registry.resolve("clf@champion", uri).version == first
    assert registry.alias_history("clf", "champion", uri) == [first]
    assert len(registry.versions("clf", uri)) == 2


def test_bad_input_gets_clear_errors(uri, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no|not"):
        registry.register(empty, "clf", {}, registry.make_lineage("h", {}), uri)
    with pytest.raises(ValueError, match="data_hash"):
        registry.register(model_dir(tmp_path, "a"), "clf", {}, {"config": {}}, uri)
    with pytest.raises(ValueError, match="name@alias"):
        registry.resolve("clf", uri)
    with pytest.raises(LookupError, match="clf@champion"):
        registry.resolve("clf@champion", uri)


def test_code_version_is_a_commit_or_unknown(tmp_path):
    assert len(registry.code_version().removesuffix("-dirty")) == 40
    assert registry.code_version(tmp_path) == "unknown"


def test_tolerance_admits_a_small_drop_and_no_gate_moves_freely(uri, tmp_path):
    champion = register(uri, tmp_path, "a", 0.90)
    slightly_worse = register(uri, tmp_path, "b", 0.895)
    much_worse = register(uri, tmp_path, "c", 0.5)
    registry.promote("clf", champion, uri=uri)
    with pytest.raises(registry.PromotionRefused):
        registry.promote("clf", slightly_worse, uri=uri)
    assert registry.promote("clf", slightly_worse, tolerance=0.01, uri=uri) == slightly_worse
    registry.promote("clf", much_worse, "challenger", metric=None, uri=uri)
    assert registry.resolve("clf@challenger", uri).version == much_worse
    assert registry.alias_history("clf", "champion", uri) == [champion, slightly_worse]


def test_pickle_files_are_refused(uri, tmp_path):
    path = model_dir(tmp_path, "a")
    (path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="safetensors"):
        registry.register(path, "clf", {}, registry.make_lineage("h", {}), uri)


def test_model_card_shows_metrics_lineage_and_every_version(uri, tmp_path):
    first = register(uri, tmp_path, "a", 0.8)
    second = register(uri, tmp_path, "b", 0.9, parent=f"clf/{first}")
    registry.promote("clf", second, uri=uri)
    card = modelcard.model_card("clf", "champion", uri)
    assert card.startswith(f"# Model card: clf (version {second}, `@champion`)")
    assert "- **accuracy**: 0.9000" in card
    assert "- **data_hash**: `hash-b`" in card
    assert "- weights: `b`" in card
    assert f"| {first} | - | 0.8000 | - |" in card
    assert f"| {second} | champion | 0.9000 | clf/{first} |" in card


def evaluated(uri: str, root: Path, weights: str, predictions: list[str], texts=None) -> int:
    """Register a stand-in model with its per-row predictions on a 200-row evaluation set."""
    texts = texts or [f"sentence {i}" for i in range(200)]
    labels = ["pos" if i % 2 else "neg" for i in range(200)]
    evaluation = registry.make_evaluation(texts, labels, predictions)
    accuracy = sum(p == t for p, t in zip(predictions, labels, strict=True)) / len(labels)
    lineage = registry.make_lineage("hash", {})
    return registry.register(
        model_dir(root, weights), "clf", {"accuracy": accuracy}, lineage, uri, evaluation
    )


def flip(predictions: list[str], rows: range) -> list[str]:
    swap = {"pos": "neg", "neg": "pos"}
    return [swap[p] if i in rows else p for i, p in enumerate(predictions)]


def test_gate_compares_versions_on_the_same_rows_with_an_interval(uri, tmp_path):
    truth = ["pos" if i % 2 else "neg" for i in range(200)]
    champion = evaluated(uri, tmp_path, "a", flip(truth, range(0, 40)))  # 80 % right
    registry.promote("clf", champion, uri=uri)
    # Two more rows wrong: 1 point lower, but the paired interval reaches -2 points.
    close = evaluated(uri, tmp_path, "b", flip(truth, range(0, 42)))
    with pytest.raises(registry.PromotionRefused, match="same 200 rows.*interval"):
        registry.promote("clf", close, tolerance=0.01, uri=uri)
    assert registry.promote("clf", close, tolerance=0.03, uri=uri) == close
    # Ten rows better everywhere the champion erred: clearly not worse.
    better = evaluated(uri, tmp_path, "c", flip(truth, range(0, 30)))
    assert registry.promote("clf", better, uri=uri) == better
    assert registry.evaluation_of(registry.resolve("clf@champion", uri), uri)["labels"] == truth


def test_gate_refuses_versions_evaluated_on_different_rows(uri, tmp_path):
    truth = ["pos" if i % 2 else "neg" for i in range(200)]
    champion = evaluated(uri, tmp_path, "a", truth)
    registry.promote("clf", champion, uri=uri)
    other_rows = [f"another sentence {i}" for i in range(200)]
    elsewhere = evaluated(uri, tmp_path, "b", truth, texts=other_rows)
    with pytest.raises(registry.PromotionRefused, match="different rows"):
        registry.promote("clf", elsewhere, uri=uri)


def test_gate_compares_logged_metrics_when_only_one_version_has_an_evaluation(uri, tmp_path):
    """Per-row predictions on one side only: no paired interval, the logged accuracies decide,
    either way round. A gate that waves through whatever it cannot pair fails this test, and one
    that pairs when either side has rows crashes on the missing side instead of refusing."""
    truth = ["pos" if i % 2 else "neg" for i in range(200)]
    champion = evaluated(uri, tmp_path, "a", flip(truth, range(0, 40)))  # logs 0.8
    registry.promote("clf", champion, uri=uri)
    unevaluated = register(uri, tmp_path, "b", 0.7)
    with pytest.raises(registry.PromotionRefused, match=r"accuracy=0\.7000, worse .* 0\.8000"):
        registry.promote("clf", unevaluated, uri=uri)
    better = register(uri, tmp_path, "c", 0.85)
    assert registry.promote("clf", better, uri=uri) == better
    evaluated_worse = evaluated(uri, tmp_path, "d", flip(truth, range(0, 40)))  # 0.8 < 0.85
    with pytest.raises(registry.PromotionRefused, match=r"accuracy=0\.8000, worse .* 0\.8500"):
        registry.promote("clf", evaluated_worse, uri=uri)
    assert registry.resolve("clf@champion", uri).version == better


def test_an_evaluation_must_have_one_prediction_per_row():
    with pytest.raises(ValueError, match="one prediction per row"):
        registry.make_evaluation(["a", "b"], ["pos", "neg"], ["pos"])
