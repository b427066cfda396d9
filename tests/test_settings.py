"""Settings in groups with flat public names, and commands that show only the groups they use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from featurewell.commands import COMMANDS
from featurewell.demo_skew import with_offline_store
from featurewell.errors import ConfigError
from featurewell.settings import GROUPS, CacheSettings, Settings, specs


def test_every_public_name_is_unique_and_reaches_its_group() -> None:
    names = [spec.name for spec in specs()]
    assert len(names) == len(set(names))
    environ = {
        "FEATUREWELL_CACHE_ENTRIES": "7",
        "FEATUREWELL_REDIS": "h1:1,h2:2",
        "FEATUREWELL_OFFLINE_DIR": "/history",
        "FEATUREWELL_METRICS_PORT": "-1",
    }
    loaded = Settings.load({"cache_ttl_s": "2.5", "port": 0}, environ=environ)
    assert loaded.cache.entries == 7
    assert loaded.cache.ttl_s == 2.5
    assert loaded.redis.seeds == (("h1", 1), ("h2", 2))
    assert loaded.offline.dir == "/history"
    assert loaded.listen.metrics_port == -1
    assert loaded.serving.port == 0
    for spec in specs():  # every public name reads back what it set
        assert loaded.public(spec.name) == getattr(
            loaded if spec.group is None else getattr(loaded, spec.group), spec.attribute
        )
    assert set(GROUPS) == {"redis", "listen", "serving", "cache", "telemetry", "offline", "auth"}


def test_flags_win_over_the_environment_and_bad_values_name_the_setting() -> None:
    environ = {"FEATUREWELL_CACHE_ENTRIES": "7"}
    assert Settings.load({"cache_entries": "9"}, environ=environ).cache.entries == 9
    with pytest.raises(ConfigError, match="cache_entries: cannot parse 'many'"):
        Settings.load({"cache_entries": "many"}, environ={})
    with pytest.raises(ConfigError, match="setting cache_mb must be positive"):
        Settings.load({"cache_mb": "0"}, environ={})
    with pytest.raises(ConfigError, match=r"unknown settings \['cache_size'\]"):
        Settings.load(environ={}).with_changes(cache_size=1)
    with pytest.raises(ConfigError, match="several workers need a fixed port"):
        Settings.load({"workers": "2", "port": "0"}, environ={})
    assert CacheSettings().entries == 100_000


def test_settings_know_which_names_the_user_gave_even_at_their_defaults() -> None:
    """The demo fills in its own sampling paces only where the user said nothing: a user who
    asks for the default served-log rate (0) must get it, not the demo's 1.0."""
    loaded = Settings.load(
        {"served_log_rate": "0", "cache_entries": None},
        environ={"FEATUREWELL_DRIFT_SAMPLE_RATE": "0.01", "FEATUREWELL_CACHE_MB": ""},
    )
    assert loaded.given == {"served_log_rate", "drift_sample_rate"}
    assert loaded.with_changes(cache_entries=5).given == loaded.given
    assert Settings.load(environ={}).given == frozenset()


def test_the_demo_keeps_a_served_log_rate_the_user_gave(tmp_path: Path) -> None:
    asked = Settings.load({"served_log_rate": "0"}, environ={})
    assert with_offline_store(asked, tmp_path).telemetry.served_log_rate == 0
    unset = Settings.load(environ={})
    assert with_offline_store(unset, tmp_path).telemetry.served_log_rate == 1.0


def test_the_password_stays_out_of_repr() -> None:
    settings = Settings.load({"redis_password": "s3cret"}, environ={})
    assert settings.redis.password == "s3cret"
    assert "s3cret" not in repr(settings)


def _help(command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "featurewell.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_each_command_lists_only_the_settings_it_uses() -> None:
    training = _help("training-set")
    assert "--offline-dir" in training
    assert "--labels" in training
    assert "--redis" in training  # to read the promoted defaults servers serve
    for unused in ("--cache-entries", "--port", "--drift-sample-rate", "--host"):
        assert unused not in training
    serve = _help("serve")
    every_server_setting = [
        s.name
        for g in ("redis", "listen", "serving", "cache", "telemetry")
        for s in specs(GROUPS[g])
    ]
    for name in every_server_setting:
        assert f"--{name.replace('_', '-')}" in serve
    assert "--offline-dir" in serve  # the served-feature log and pushed rows (docs/skew.md)
    stream = _help("stream")
    assert "--offline-dir" in stream
    assert "--metrics-port" in stream
    assert "--cache-entries" not in stream
    # Every command's help fits on a screen or two, not the 200 lines of every setting.
    by_name = {command.name: command for command in COMMANDS}
    assert set(by_name) >= {"serve", "materialize", "stream", "training-set", "demo"}
    assert len(_help("promote").splitlines()) < 70


def test_a_command_without_its_repo_says_how_to_give_one() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "featurewell.cli", "versions"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": ""},
        check=False,
    )
    assert done.returncode == 2
    assert "--repo (or FEATUREWELL_REPO) is required" in done.stderr


def test_log_level_takes_any_case_and_refuses_unknown_levels() -> None:
    assert Settings.load({"log_level": "info"}, environ={}).log_level == "INFO"
    assert Settings.load(environ={"FEATUREWELL_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="log_level must be DEBUG, INFO"):
        Settings.load({"log_level": "chatty"}, environ={})


def test_refresh_ahead_is_a_fraction_of_the_ttl_below_one() -> None:
    assert Settings.load({"cache_refresh_ahead": "0"}, environ={}).cache.refresh_ahead == 0.0
    assert CacheSettings().refresh_ahead == 0.2
    with pytest.raises(ConfigError, match="cache_refresh_ahead must be below 1"):
        Settings.load({"cache_refresh_ahead": "1"}, environ={})
    with pytest.raises(ConfigError, match="cache_refresh_ahead"):
        Settings.load({"cache_refresh_ahead": "-0.1"}, environ={})
    with pytest.raises(ConfigError, match="cache_refresh_ahead"):
        Settings.load({"cache_refresh_ahead": "nan"}, environ={})


def test_gc_pacing_is_off_or_between_a_floor_and_the_automatic_threshold() -> None:
    assert Settings.load({"gc_pace_objects": "0"}, environ={}).serving.gc_pace_objects == 0
    assert Settings.load(environ={}).serving.gc_pace_objects == 1000
    for raw in ("50", "50000", "-1"):  # a pass per call; never before CPython's own; nonsense
        with pytest.raises(ConfigError, match="gc_pace_objects must be 0"):
            Settings.load({"gc_pace_objects": raw}, environ={})
    lowered = Settings.load({"gc_pace_objects": "5000", "gc_gen0_threshold": "6000"}, environ={})
    assert lowered.serving.gc_pace_objects == 5000


def test_generation_one_passes_and_the_gil_turns_have_bounded_settings() -> None:
    serving = Settings.load(environ={}).serving
    assert (serving.gc_gen1_every, serving.gil_switch_interval_ms) == (5, 0.5)
    given = Settings.load({"gc_gen1_every": "20", "gil_switch_interval_ms": "5"}, environ={})
    assert (given.serving.gc_gen1_every, given.serving.gil_switch_interval_ms) == (20, 5.0)
    # None, negative, not a number, or a wait no caller would want: each named.
    for raw in ("0", "-1", "nan", "inf", "100.5"):
        with pytest.raises(ConfigError, match="gil_switch_interval_ms"):
            Settings.load({"gil_switch_interval_ms": raw}, environ={})
    for raw in ("0", "-2", "1.5"):
        with pytest.raises(ConfigError, match="gc_gen1_every"):
            Settings.load({"gc_gen1_every": raw}, environ={})


def test_the_served_log_writer_yields_by_default_within_niceness_bounds() -> None:
    assert Settings.load(environ={}).telemetry.served_log_nice == 19
    assert Settings.load({"served_log_nice": "0"}, environ={}).telemetry.served_log_nice == 0
    for raw in ("20", "-1"):
        with pytest.raises(ConfigError, match="served_log_nice must be 0-19"):
            Settings.load({"served_log_nice": raw}, environ={})


def test_float_settings_refuse_values_that_are_not_finite() -> None:
    for raw in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match=f"store_timeout_ms: cannot parse '{raw}'"):
            Settings.load({"store_timeout_ms": raw}, environ={})
