"""A model card for a registered version: the registry's metadata and the sections people write."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llmlab import registry


def model_card(
    name: str,
    alias: str = "champion",
    uri: str | None = None,
    *,
    intended_use: str = "",
    out_of_scope: Sequence[str] = (),
    evaluation_data: str = "",
    slices: Mapping[str, str] | None = None,
    privacy: Mapping[str, str] | None = None,
    limitations: Sequence[str] = (),
) -> str:
    """A Markdown model card for `name@alias` (Mitchell et al. 2019): the registry's metadata plus
    the sections only people can write; an empty section says so instead of vanishing."""
    current = registry.resolve(f"{name}@{alias}", uri)
    missing = "_Not documented for this version._"

    def section(title: str, lines: list[str]) -> list[str]:
        return [f"## {title}", "", *(lines or [missing]), ""]

    def pairs(values: Mapping[str, str] | None) -> list[str]:
        return [f"- **{key}**: {value}" for key, value in (values or {}).items()]

    lineage = dict(current.lineage)
    config = lineage.pop("config", {}) or {}
    rows = [
        f"| {v.version} | {', '.join(v.aliases) or '-'} | "
        + " | ".join(f"{v.metrics.get(m, float('nan')):.4f}" for m in sorted(current.metrics))
        + f" | {v.lineage.get('parent') or '-'} | `{str(v.lineage.get('data_hash', ''))[:12]}` |"
        for v in registry.versions(name, uri)
    ]
    metric_names = sorted(current.metrics)
    return "\n".join(
        [
            f"# Model card: {name} (version {current.version}, `@{alias}`)",
            "",
            *section("Intended use", [intended_use] if intended_use else []),
            *section("Out-of-scope uses", [f"- {use}" for use in out_of_scope]),
            *section("Evaluation data", [evaluation_data] if evaluation_data else []),
            "## Metrics",
            "",
            *[f"- **{m}**: {current.metrics[m]:.4f}" for m in metric_names],
            "",
            "## Lineage",
            "",
            *[f"- **{key}**: `{value}`" for key, value in sorted(lineage.items())],
            f"- **registry run**: `{current.run_id}`",
            "",
            "## Training configuration",
            "",
            *[f"- {key}: `{value}`" for key, value in sorted(config.items())],
            "",
            "## All versions",
            "",
            "| version | aliases | " + " | ".join(metric_names) + " | parent | data hash |",
            "|---|---|" + "---|" * len(metric_names) + "---|---|",
            *rows,
            "",
            *section("Metrics by slice", pairs(slices)),
            *section("Privacy", pairs(privacy)),
            *section("Limitations", [f"- {limit}" for limit in limitations]),
        ]
    )
