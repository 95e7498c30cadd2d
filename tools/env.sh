# Environment for every llmlab command: keep tool state inside the build dir, not $HOME.
# Sourced by the Makefile; source it yourself before running labs or tests by hand.
_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export LLMLAB_BUILD_DIR="${LLMLAB_BUILD_DIR:-$_root/_build}"
_home="$LLMLAB_BUILD_DIR/home"
export WANDB_MODE="${WANDB_MODE:-offline}"
export WANDB_DIR="$LLMLAB_BUILD_DIR/wandb"
export WANDB_CACHE_DIR="$_home/wandb-cache"
export WANDB_CONFIG_DIR="$_home/wandb-config"
export WANDB_DATA_DIR="$_home/wandb-data"
export WANDB_SILENT=true
export MPLCONFIGDIR="$_home/matplotlib"
export KERAS_HOME="$_home/keras"
export IPYTHONDIR="$_home/ipython"
export JUPYTER_CONFIG_DIR="$_home/jupyter-config"
export JUPYTER_DATA_DIR="$_home/jupyter-data"
export JUPYTER_RUNTIME_DIR="$_home/jupyter-runtime"
export JUPYTER_PLATFORM_DIRS=1
export HF_HOME="$_home/huggingface"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TF_CPP_MIN_LOG_LEVEL=2
export PYDEVD_DISABLE_FILE_VALIDATION=1
# Idle OpenMP threads sleep instead of spinning: two cores are shared by kernels and servers.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$LLMLAB_BUILD_DIR/mlflow.db}"
export SPARK_LOCAL_DIRS="$LLMLAB_BUILD_DIR/spark"
mkdir -p "$WANDB_DIR" "$MPLCONFIGDIR" "$KERAS_HOME" "$IPYTHONDIR" "$HF_HOME" "$SPARK_LOCAL_DIRS"
unset _root _home
