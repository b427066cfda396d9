"""The fault-injection knob (featurewell/faults.py): what `fault_delay` accepts, what it refuses
with a clear error, and which calls it delays. (That a delay reaches clients is shown by the
real gate in test_gate.py.)"""

from __future__ import annotations

import pytest

from featurewell import faults as fault
from featurewell.errors import ConfigError
from featurewell.serving import wire
from featurewell.settings import Settings, specs
from featurewell.v1 import feature_service_pb2 as pb


@pytest.mark.parametrize(
    ("text", "single_s", "batch_s"),
    [
        ("", 0.0, 0.0),
        ("single:8ms", 0.008, 0.0),
        ("batch:8ms", 0.0, 0.008),
        ("single:250us, batch:0.5s", 0.00025, 0.5),
        ("BATCH:2MS,", 0.0, 0.002),
    ],
)
def test_fault_delay_parses_kinds_and_units(text: str, single_s: float, batch_s: float) -> None:
    delay = fault.parse(text)
    assert delay.single_s == pytest.approx(single_s)
    assert delay.batch_s == pytest.approx(batch_s)
    assert bool(delay) == bool(single_s or batch_s)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("single", "is not kind:delay"),
        ("single:8", "is not kind:delay"),  # a unit is required: 8 what?
        ("single:8m", "is not kind:delay"),
        ("single:-8ms", "is not kind:delay"),
        ("ranking:8ms", "is not kind:delay with kind single or batch"),
        ("single:8ms,single:1ms", "single is given twice"),
        ("batch:61s", "longer than 60 s"),
        ("single:8ms;batch:8ms", "is not kind:delay"),
    ],
)
def test_bad_fault_delays_are_refused_naming_the_setting(text: str, said: str) -> None:
    with pytest.raises(ConfigError, match="setting fault_delay") as refused:
        Settings.load({"fault_delay": text})
    assert said in str(refused.value)


def test_fault_delay_is_off_by_default_and_read_from_the_environment() -> None:
    assert not fault.parse(Settings.load(environ={}).serving.fault_delay)
    loaded = Settings.load(environ={"FEATUREWELL_FAULT_DELAY": "batch:8ms"})
    assert fault.parse(loaded.serving.fault_delay) == fault.FaultDelay(batch_s=0.008)


def test_fault_delay_is_the_only_fault_injection_setting() -> None:
    """inject_delay_ms (every call, in ms) was folded into fault_delay: one knob, one log line.
    Asked for by name it is refused, not silently ignored."""
    with pytest.raises(ConfigError, match="inject_delay_ms"):
        Settings.load({"inject_delay_ms": "400"})
    faults_like = [s.name for s in specs() if "delay" in s.name and s.name != "drain_delay_s"]
    assert faults_like == ["fault_delay"]


def _request(users: list[str], items: list[str] | None = None) -> pb.GetFeaturesRequest:
    request = pb.GetFeaturesRequest(features=["user_activity:*"])
    request.entities["user_id"].strings.values.extend(users)
    if items is not None:
        request.entities["item_id"].strings.values.extend(items)
    return request


def test_single_and_batch_calls_get_their_own_delay() -> None:
    """Single is one row, as the server's histogram counts it (`shape="single"`): a ranking
    call of 1 user + 500 items (a broadcast user key) is batch."""
    delay = fault.parse("single:8ms,batch:3ms")
    single = wire.feature_request(_request(["u1"]).SerializeToString())
    ranking = wire.feature_request(_request(["u1"], [f"i{i}" for i in range(500)]))
    several_users = wire.feature_request(_request(["u1", "u2"]))
    assert delay.seconds(single) == pytest.approx(0.008)
    assert delay.seconds(ranking) == pytest.approx(0.003)
    assert delay.seconds(several_users) == pytest.approx(0.003)
    assert fault.parse("batch:3ms").seconds(single) == 0.0


def test_a_server_applying_a_fault_delay_says_so_in_its_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="featurewell.faults"):
        assert fault.applied("") == fault.FaultDelay()
        assert not caplog.records
        assert fault.applied("batch:8ms") == fault.FaultDelay(batch_s=0.008)
    assert "fault injection on (fault_delay=batch:8ms)" in caplog.text
    assert "8.0 ms batch" in caplog.text
