"""A quiet local Spark session sized for a small machine (built in lab 07, used by lab 07)."""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from llmlab.config import build_dir

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARK_LOG_CONFIG = """\
# Written by llmlab.spark.spark_session: errors only, so notebooks stay readable.
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
# PySpark's gateway announces "Setting default log level" unless its logger agrees with the root.
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
"""


def java_available() -> bool:
    """True when a Java runtime for Spark is on PATH or under JAVA_HOME."""
    java_home = os.environ.get("JAVA_HOME")
    return shutil.which("java") is not None or bool(
        java_home and (Path(java_home) / "bin" / "java").exists()
    )


def spark_session(master: str = "local[2]", app_name: str = "llmlab") -> SparkSession:
    """A quiet SparkSession; `master` is local[N] here, spark://host:7077 or yarn on a cluster."""
    if not java_available():
        raise RuntimeError("Spark needs a Java runtime (17 or newer): install one or set JAVA_HOME")
    # PySpark 4.3 warns on every pandas 3 import; the labs check Spark against pandas themselves.
    warnings.filterwarnings(
        "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
    )
    from pyspark.sql import SparkSession

    spark_dir = build_dir() / "spark"
    spark_dir.mkdir(parents=True, exist_ok=True)
    log_config = spark_dir / "log4j2.properties"
    log_config.write_text(SPARK_LOG_CONFIG)
    java_options = f"-Dlog4j2.configurationFile={log_config.as_uri()}"
    # Python workers must run this interpreter (the venv), not whatever python3 is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.local.dir", str(spark_dir))
        .config("spark.ui.showConsoleProgress", "false")
        # The default of 200 shuffle partitions suits clusters; tiny local jobs drown in tasks.
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
