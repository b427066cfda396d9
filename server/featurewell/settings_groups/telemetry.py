"""The telemetry group: traces, freshness, drift, lineage and the served-feature log, all of
which run after the answer and never change it."""

from __future__ import annotations

from dataclasses import dataclass

from featurewell.errors import ConfigError
from featurewell.settings_groups.group import Group, niceness, positive, setting


@dataclass(frozen=True)
class TelemetrySettings(Group):
    title = "telemetry"
    traces_exporter: str = setting(
        "traces_exporter",
        "OpenTelemetry trace exporter: otlp (gRPC), console, or none. Unset, it is taken from "
        "OTEL_TRACES_EXPORTER, or otlp when an OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set; the "
        "SDK reads the other OTEL_* variables (endpoint, sampler, service name) itself.",
        "none",
    )
    freshness_interval_s: float = setting(
        "freshness_interval_s",
        "How often to read every view's write marker (newest event, last write) for the "
        "freshness gauges.",
        15.0,
    )
    drift_sample_rate: float = setting(
        "drift_sample_rate", "Share of GetFeatures calls whose served values feed drift.", 0.01
    )
    drift_window_s: float = setting(
        "drift_window_s", "Drift is compared with the baseline over windows of this length.", 300.0
    )
    drift_reservoir: int = setting(
        "drift_reservoir", "Values kept per feature and window for drift (a sample).", 2048
    )
    drift_baseline: str = setting(
        "drift_baseline",
        "Baseline JSON from `featurewell baseline` (training data); without it, the expected "
        "statistics (Stats) in the definitions.",
        "",
    )
    consumers_flush_s: float = setting(
        "consumers_flush_s",
        "How often each server adds the callers it served (`x-featurewell-model`) and the views "
        "they read to Redis, for `featurewell lineage`.",
        10.0,
    )
    served_log_rate: float = setting(
        "served_log_rate",
        "Share of GetFeatures calls whose answers are logged to the offline store's _served "
        "folder (per view; 0: off, 1: all); needs offline_dir. docs/skew.md.",
        0.0,
    )
    served_log_callers: str = setting(
        "served_log_callers",
        "Per-caller rates (x-featurewell-model), name=rate comma-separated, e.g. "
        "ranker/3=1,search=0.01: a listed caller's rate replaces every other for its calls.",
        "",
    )
    served_log_views: str = setting(
        "served_log_views",
        "Per-view (or on-demand transform) rates, name=rate comma-separated: a listed view's "
        "rate replaces served_log_rate for it (not a served_log_callers rate).",
        "",
    )
    served_log_queue_rows: int = setting(
        "served_log_queue_rows",
        "Rows the served-log writer may hold; beyond them records are dropped and counted "
        "(featurewell_served_log_dropped_total), never waited for.",
        200_000,
    )
    served_log_flush_s: float = setting(
        "served_log_flush_s",
        "How often the served-log writer adds a batch of files (sooner at "
        "served_log_batch_rows rows).",
        5.0,
    )
    served_log_batch_rows: int = setting(
        "served_log_batch_rows", "Queued rows that start a served-log write early.", 50_000
    )
    served_log_nice: int = setting(
        "served_log_nice",
        "Niceness added to the served-log writer's thread (Linux; 0: off, up to 19). Its "
        "Parquet writes share the event loop's core; at a lower priority the loop takes the "
        "core whenever both want it, and the writer runs late, not in the answers' time "
        '(docs/skew.md, "How it is written, and why this way").',
        19,
    )

    def check(self) -> None:
        positive(self, "freshness_interval_s", "drift_window_s", "drift_reservoir")
        if not 0 <= self.drift_sample_rate <= 1:
            raise ConfigError("setting drift_sample_rate must be in [0, 1] (a share of calls)")
        if not 0 <= self.served_log_rate <= 1:
            raise ConfigError("setting served_log_rate must be in [0, 1] (a share of calls)")
        positive(self, "served_log_queue_rows", "served_log_flush_s", "served_log_batch_rows")
        niceness(self, "served_log_nice")
        rate_list(self.served_log_callers, "served_log_callers")
        rate_list(self.served_log_views, "served_log_views")
        if self.traces_exporter not in ("otlp", "console", "none"):
            raise ConfigError(
                f"setting traces_exporter must be otlp, console or none, got "
                f"{self.traces_exporter!r}"
            )


def rate_list(text: str, name: str) -> dict[str, float]:
    """A `name=rate,name=rate` setting as a dict; ConfigError naming the setting otherwise."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, rate = item.partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if not key.strip() or not 0 <= value <= 1:
            raise ConfigError(
                f"setting {name}: {item!r} is not name=rate with a rate in [0, 1] "
                "(e.g. ranker/3=1.0,search=0.01)"
            )
        rates[key.strip()] = value
    return rates
