"""Where tools keep their state: tools/env.list, applied by `llmlab` as tools/env.sh applies it."""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from llmlab.config import REPO_ROOT

ENV_LIST = REPO_ROOT / "tools" / "env.list"


@dataclass(frozen=True)
class Setting:
    """One line of tools/env.list: NAME = VALUE (always) or NAME ?= VALUE (unless already set)."""

    name: str
    value: str
    keep_existing: bool

    def resolve(self, build: Path) -> str:
        """The value with {build} replaced by the build dir."""
        return self.value.replace("{build}", str(build))

    @property
    def is_folder(self) -> bool:
        """Values under {build}/ are folders, made when the setting is applied."""
        return self.value.startswith("{build}/")


def read_settings(path: Path = ENV_LIST) -> list[Setting]:
    """Parse tools/env.list (comments and blank lines skipped)."""
    settings = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, operator, value = (*line.split(maxsplit=2), "")[:3]  # NAME = (nothing): empty
        if operator not in ("=", "?="):
            raise ValueError(f"{path}: expected NAME = VALUE or NAME ?= VALUE, got {line!r}")
        settings.append(Setting(name, value, keep_existing=operator == "?="))
    return settings


def apply_environment(environ: MutableMapping[str, str] = os.environ) -> Path:
    """Set what tools/env.sh sets (into `environ`), make its folders; return the build dir."""
    build = Path(environ.get("LLMLAB_BUILD_DIR") or REPO_ROOT / "_build")
    environ["LLMLAB_BUILD_DIR"] = str(build)
    for setting in read_settings():
        if setting.keep_existing and environ.get(setting.name):
            continue
        environ[setting.name] = setting.resolve(build)
        if setting.is_folder:
            Path(environ[setting.name]).mkdir(parents=True, exist_ok=True)
    return build


def outside_build_dir(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The NAME=VALUE settings whose folder or sqlite file lies outside the build dir."""
    build = Path(environ.get("LLMLAB_BUILD_DIR") or REPO_ROOT / "_build").resolve()
    outside = []
    for setting in read_settings():
        value = environ.get(setting.name, "")
        is_sqlite = value.startswith("sqlite:///")
        if not (setting.is_folder or is_sqlite):
            continue
        path = Path(value.removeprefix("sqlite:///")) if value else Path.home()
        if not path.resolve().is_relative_to(build):
            outside.append(f"{setting.name}={value or '(unset: $HOME)'}")
    return outside
