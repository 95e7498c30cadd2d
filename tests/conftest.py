"""Keep every tool's state in a temporary directory during tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_helpers import ADMIN_TOKEN, save_models


@pytest.fixture(autouse=True)
def isolated_build_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point LLMLAB_BUILD_DIR and the tools' home directories at a temp dir."""
    build = tmp_path / "build"
    monkeypatch.setenv("LLMLAB_BUILD_DIR", str(build))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(build / "wandb"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(build / "home" / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(build / "home" / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(build / "home" / "wandb-data"))
    monkeypatch.setenv("MPLCONFIGDIR", str(build / "home" / "matplotlib"))
    monkeypatch.setenv("KERAS_HOME", str(build / "home" / "keras"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{build / 'mlflow.db'}")
    return build


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of a tiny classifier, v1 and v2, that disagree."""
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin routes' token, as an operator sets it (service tests use it module-wide)."""
    monkeypatch.setenv("LLMLAB_ADMIN_TOKEN", ADMIN_TOKEN)


# What the inner loop (`make quick`) leaves out, by module and test function: tests that start
# another program or runtime (integration), serve over a real port (service) or take more than a
# few seconds on 2 cores (slow). `make unit` and CI run them all. One table rather than decorators
# in each file, so the inner loop's cut is reviewed in one place; tests/test_markers.py checks
# every name here is a test that exists. "*": every test of the module.
MARKS: dict[str, dict[str, tuple[str, ...]]] = {
    "test_jupyterlab": {"*": ("integration",)},  # a Jupyter server and its kernels
    "test_papermill": {"*": ("integration",)},
    "test_system_ray": {"*": ("integration",)},  # Ray Serve
    "test_system_entrypoint": {"*": ("integration",)},  # builds Ray Serve's deployments
    "test_registry": {"*": ("integration",)},  # MLflow: a fresh SQLite registry migrated per test
    "test_track": {"*": ("integration",)},  # wandb's service process
    "test_system_cache": {"test_server_stops_and_missing_binary_is_explained": ("integration",)},
    "test_distributed": {
        "test_two_process_ddp_and_fsdp_reproduce_the_single_process_run": ("integration",),
        "test_torchrun_reports_a_failing_worker": ("integration",),
        "test_spark_word_count_matches_python": ("integration",),
    },
    "test_streaming": {"test_restarted_stream_lands_every_row_exactly_once": ("integration",)},
    "test_pipeline": {
        "test_data_versions_are_tracked_and_an_old_one_comes_back": ("integration",),
        "test_cli_exits_1_and_names_the_failed_stage": ("integration",),
        "test_a_failing_gate_stops_the_pipeline_and_the_champion_keeps_serving": ("integration",),
    },
    "test_timings": {  # `llmlab run`: papermill
        "test_run_with_save_timings_copies_the_labs_own_record": ("integration",),
        "test_run_with_save_timings_refuses_a_lab_that_records_no_timing": ("integration",),
    },
    "test_gpucheck": {  # each trains or times the check's model (6 to 60 s at load 30)
        name: ("slow",)
        for name in (
            "test_cpu_run_trains_for_real_and_skips_the_cuda_only_checks",
            "test_the_batching_check_fails_when_a_scheduler_drops_tokens",
            "test_a_raising_check_is_recorded_as_failed_and_the_run_goes_on",
            "test_a_check_over_its_gpu_budget_fails",
            "test_the_exit_code_follows_the_claims",
        )
    },
    "test_embeddings": {"test_embed_equals_sentence_transformers_encode": ("slow",)},
    "test_cli": {  # a process with its own environment; papermill
        "test_llmlab_keeps_tool_state_out_of_home_without_env_sh": ("integration",),
        "test_run_names_the_failing_cell_and_its_error": ("integration",),
    },
    "test_bench": {
        "test_all_reduce_over_two_gloo_ranks_sums_right_and_measures_bandwidth": ("integration",)
    },
    "test_trust": {"test_federated_average_weights_each_client_by_its_rows": ("integration",)},
    "test_models": {"test_gpu_sized_model_runs_forward_and_backward_on_cpu": ("slow",)},
    "test_train": {"test_compile_on_cpu_gives_the_eager_losses": ("slow",)},  # 47 s at load 5
    "test_serve": {
        "test_llmlab_serve_answers_real_http_load_on_localhost": ("service",),
        "test_a_server_that_cannot_start_reports_its_log": ("service",),
        "test_onnx_backend_matches_pytorch": ("slow",),
        "test_load_classifier_names_the_missing_weights": ("slow",),  # exports to ONNX
        "test_moving_the_registry_alias_and_reloading_switches_the_served_version": (
            "integration",  # MLflow
        ),
    },
    "test_serve_faults": {
        "test_a_full_queue_sheds_at_once_with_retry_after_and_no_504": ("service",),
        "test_a_request_whose_client_left_is_not_computed": ("service",),
        "test_sigterm_drains_requests_in_flight_then_exits": ("service",),
    },
    "test_serve_generate": {
        name: ("service",)  # uvicorn in a thread
        for name in (
            "test_stream_is_greedy_generate_token_by_token_through_the_kv_cache",
            "test_seeded_sampling_repeats_even_among_concurrent_sampled_streams",
            "test_eos_ends_the_stream_without_sending_it",
            "test_a_full_engine_answers_429_with_retry_after_at_once",
            "test_a_stream_past_its_deadline_ends_with_finish_reason_deadline",
            "test_a_client_that_leaves_stops_its_decoding_and_frees_its_slot",
            "test_streams_advance_together_one_token_each_per_iteration",
        )
    },
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests MARKS names (a parametrized test: every case)."""
    for item in items:
        module = MARKS.get(item.path.stem, {})
        name = getattr(item, "originalname", item.name)
        for marker in module.get("*", ()) + module.get(name, ()):
            item.add_marker(marker)
