import pytest

from llmlab.track import Tracker


def test_tracker_keeps_history_and_writes_offline_run(isolated_build_dir):
    with Tracker("llmlab-test", config={"lr": 0.1}) as tracker:
        tracker.log({"loss": 2.0}, step=0)
        tracker.log({"loss": 1.0}, step=1)
        history = tracker.history
        run_id = tracker.run_id
    assert history["loss"].tolist() == [2.0, 1.0]
    assert history["step"].tolist() == [0, 1]
    assert run_id
    assert any((isolated_build_dir / "wandb").rglob(f"*{run_id}*"))


def test_tracker_rejects_unknown_mode():
    with pytest.raises(ValueError, match="wandb mode"):
        Tracker("llmlab-test", mode="cloud")
