"""Settings come from a file, the environment and flags, in that order of strength."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import load_settings, parse_cpu_list


def test_defaults_match_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("TURNOUT_PORT", "TURNOUT_GRPC_THREADS", "TURNOUT_REPOSITORY"):
        monkeypatch.delenv(key, raising=False)
    settings = load_settings(None, {})
    assert settings.port == 8001 and settings.processes == 1 and settings.max_message_bytes == 1 << 30


def test_flags_beat_the_environment_which_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text("port: 9000\ngrpc_threads: 16\nrepository: /from/file\nlog_level: ERROR\n")
    monkeypatch.setenv("TURNOUT_PORT", "9100")
    monkeypatch.setenv("TURNOUT_GRPC_THREADS", "32")
    settings = load_settings(config, {"port": 9200, "grpc_threads": None})
    assert settings.port == 9200, "a flag wins"
    assert settings.grpc_threads == 32, "the environment wins over the file; a flag not given does not count"
    assert settings.repository == Path("/from/file") and settings.log_level == "ERROR"


@pytest.mark.parametrize(("key", "value"), [("port", 70_000), ("processes", 0), ("shadow_queue_size", 0)])
def test_out_of_range_values_are_refused(key: str, value: int) -> None:
    with pytest.raises(ValidationError, match=key):
        load_settings(None, {key: value})


def test_unknown_keys_in_the_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text("prot: 9000\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(config, {})


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_settings(config, {})


def test_gateway_cpus_read_like_taskset_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_cpu_list("0,2,4-6") == (0, 2, 4, 5, 6)
    assert parse_cpu_list("3, 3,1") == (3, 1)
    assert load_settings(None, {"gateway_cpus": "1-2"}).gateway_cpus == (1, 2)
    monkeypatch.setenv("TURNOUT_GATEWAY_CPUS", "0-1")
    assert load_settings(None, {}).gateway_cpus == (0, 1)


@pytest.mark.parametrize("text", ["a", "1-", "-1", "3-1", "0,x-2"])
def test_malformed_cpu_lists_are_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="gateway_cpus"):
        load_settings(None, {"gateway_cpus": text})


def test_the_state_url_comes_from_the_flag_or_the_environment_and_must_be_postgresql(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TURNOUT_STATE_URL", raising=False)
    assert load_settings(None, {}).state_url is None, "without it: SQLite under the state directory"
    monkeypatch.setenv("TURNOUT_STATE_URL", "postgresql://turnout@db.example:5432/turnout")
    assert load_settings(None, {}).state_url == "postgresql://turnout@db.example:5432/turnout"
    flag = load_settings(None, {"state_url": "postgres://other@db:5432/fleet"})
    assert flag.state_url == "postgres://other@db:5432/fleet", "the flag wins, in either spelling"
    with pytest.raises(ValidationError, match="state_url"):
        load_settings(None, {"state_url": "mysql://turnout@db/turnout"})


def test_the_log_names_the_database_never_its_password() -> None:
    from gateway.state.open_store import describe_state_location

    settings = load_settings(None, {"state_url": "postgresql://turnout:s3cret@db.example:6432/fleet"})
    assert describe_state_location(settings) == "PostgreSQL at db.example:6432/fleet"
