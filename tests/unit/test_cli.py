"""The ``turnout`` command line: help that names every default and variable, defaults from the settings
model alone, ``--version``, Triton flags refused with exit status 2, and where routing state lives."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.cli import build_parser, main, subcommand
from gateway.client import commands
from gateway.settings import STATE_DIR_DEFAULT_TEXT, Settings, default_state_dir, load_settings

_DEFAULT = re.compile(r"\(default: (?P<default>.*?)(?:; env (?P<env>TURNOUT_\w+))?\)$")


@pytest.fixture(autouse=True)
def no_turnout_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults are what is checked here, so no TURNOUT_* variable of the machine may count."""
    import os

    for key in [key for key in os.environ if key.startswith("TURNOUT_")]:
        monkeypatch.delenv(key)


def every_action(parser: argparse.ArgumentParser, path: str = "turnout") -> Iterator[tuple[str, argparse.Action]]:
    """(command path, action) for every argument of every command, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from every_action(child, f"{path} {name}")
        yield path, action


def documented(action: argparse.Action) -> bool:
    return action.help != argparse.SUPPRESS and not isinstance(
        action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
    )


def serve_setting_actions() -> list[argparse.Action]:
    serve = subcommand(build_parser(), "serve")
    return [action for action in serve._actions if documented(action) and action.dest in Settings.model_fields]


def test_every_argument_of_every_command_says_its_default() -> None:
    checked = 0
    for path, action in every_action(build_parser()):
        if not documented(action):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"{path} {name} has no help"
        assert "(default: " in action.help or "(required" in action.help, f"{path} {name}: {action.help!r}"
        checked += 1
    assert checked > 50, "the walk reached every command"


def test_every_serve_flag_names_its_environment_variable() -> None:
    serve = subcommand(build_parser(), "serve")
    for action in serve._actions:
        if not documented(action):
            continue
        assert action.help is not None
        match = _DEFAULT.search(action.help)
        assert match is not None and match["env"] == f"TURNOUT_{action.dest.upper()}", action.help


def test_serve_flags_cover_the_settings_model_except_the_internal_ones() -> None:
    shown = {action.dest for action in serve_setting_actions()}
    assert set(Settings.model_fields) - shown == {"worker_broker", "reuse_port"}
    serve = subcommand(build_parser(), "serve")
    hidden = {a.dest for a in serve._actions if a.help == argparse.SUPPRESS}
    assert hidden == {"worker_broker", "reuse_port"}, "still accepted, for the supervisor, but not shown"


def test_the_defaults_printed_are_the_settings_models(tmp_path: Path) -> None:
    """Each printed default, given back as the flag's value, yields the setting's own default."""
    defaults = load_settings(None, {"repository": tmp_path})
    parser = build_parser()
    for action in serve_setting_actions():
        assert action.default is None, f"--{action.dest} must not hide the environment and the file"
        assert action.help is not None
        match = _DEFAULT.search(action.help)
        assert match is not None, action.help
        printed, expected = match["default"], getattr(defaults, action.dest)
        if action.dest == "state_dir":
            assert printed == STATE_DIR_DEFAULT_TEXT and expected == default_state_dir(tmp_path)
            continue
        if action.dest == "repository":
            expected = Settings.model_fields["repository"].default
        if printed == "none":
            assert not expected, f"--{action.dest}"
            continue
        flag = action.option_strings[0]
        given = parser.parse_args(["serve", f"{flag}={printed}"])
        assert getattr(load_settings(None, {action.dest: getattr(given, action.dest)}), action.dest) == expected, flag


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"turnout {version('turnout')}\n"


def test_triton_flags_without_an_equivalent_exit_2_naming_each(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--model-repository=/models", "--grpc-infer-allocation-pool-size=8", "--http-port", "8000"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "turnout: Triton flag --grpc-infer-allocation-pool-size has no Turnout equivalent",
        "turnout: Triton flag --http-port has no Turnout equivalent",
    ]


def test_triton_and_turnout_flags_parse_into_the_same_namespace() -> None:
    parser = build_parser()
    from gateway.triton_flags import translate_triton_flags

    native = subcommand(parser, "serve")._option_string_actions
    triton = ["--model-store", "/m", "--grpc-port=9", "--strict-readiness=off", "--exit-timeout-secs", "4"]
    args = parser.parse_args(["serve", *translate_triton_flags(triton, native)])
    assert (args.repository, args.port, args.strict_readiness, args.grace_period_s) == (Path("/m"), 9, False, 4.0)
    assert parser.parse_args(["serve", "--strict-readiness"]).strict_readiness is True


def test_log_flags_parse_and_triton_s_load_thread_count_becomes_ours() -> None:
    parser = build_parser()
    from gateway.triton_flags import translate_triton_flags

    native = subcommand(parser, "serve")._option_string_actions
    given = ["--log-format", "json", "--access-log", "on", "--access-log-sample=0.1", "--model-load-thread-count=2"]
    args = parser.parse_args(["serve", *translate_triton_flags(given, native)])
    assert (args.log_format, args.access_log, args.access_log_sample, args.model_load_threads) == ("json", True, 0.1, 2)
    with pytest.raises(SystemExit):  # Triton's own --log-format values are not Turnout's
        parser.parse_args(["serve", "--log-format", "ISO8601"])
    defaults = Settings()
    assert (defaults.log_format, defaults.access_log, defaults.access_log_sample, defaults.model_load_threads) == (
        "text", False, 1.0, 4
    )  # fmt: skip


def test_operator_commands_take_their_server_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_SERVER", raising=False)
    assert build_parser().parse_args(["status"]).server == commands.DEFAULT_SERVER == "localhost:8003"
    monkeypatch.setenv("TURNOUT_SERVER", "gateway.internal:9001")
    for command in ("status", "history digits", "rollback digits"):
        assert build_parser().parse_args(command.split()).server == "gateway.internal:9001", command
    # TURNOUT_SERVER names the control address; health asks the inference port.
    assert build_parser().parse_args(["health"]).server == commands.DEFAULT_HEALTH_SERVER == "localhost:8001"


def test_the_control_token_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789\n")
    bearer = (("authorization", "Bearer file-token-0123456789"),)
    assert commands.control_metadata(str(token_file), {"TURNOUT_TOKEN": "env-token"}) == bearer, "the file wins"
    assert commands.control_metadata(None, {"TURNOUT_TOKEN": "env-token"}) == (("authorization", "Bearer env-token"),)
    assert commands.control_metadata(None, {}) == ()
    with pytest.raises(SystemExit, match="cannot read the token file"):
        commands.control_metadata(str(tmp_path / "absent"), {})


def test_operator_defaults_come_from_one_place() -> None:
    parser = build_parser()
    assert parser.parse_args(["status"]).timeout_s == commands.DEFAULT_TIMEOUT_S
    assert parser.parse_args(["health"]).timeout_s == commands.DEFAULT_HEALTH_TIMEOUT_S
    assert parser.parse_args(["history", "digits"]).limit == commands.DEFAULT_HISTORY_LIMIT


# --- where the routing state lives -------------------------------------------------------------


def test_routing_state_defaults_to_the_xdg_state_directory_per_repository(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "models", tmp_path / "b" / "models"
    environ = {"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    here = default_state_dir(first, environ)
    assert here.parent == tmp_path / "xdg" / "turnout" and re.fullmatch(r"models-[0-9a-f]{8}", here.name)
    assert default_state_dir(second, environ) != here, "same name, different repository: separate state"
    assert default_state_dir(first / ".." / "models", environ) == here, "one repository, however it is spelled"


def test_without_xdg_state_home_the_state_goes_under_the_home_directory(tmp_path: Path) -> None:
    for environ in ({"HOME": str(tmp_path)}, {"HOME": str(tmp_path), "XDG_STATE_HOME": "relative/is/ignored"}):
        assert default_state_dir(tmp_path / "m", environ).parent == tmp_path / ".local" / "state" / "turnout"


def test_settings_fill_the_state_directory_from_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert load_settings(None, {"repository": tmp_path}).state_dir == default_state_dir(tmp_path)
    monkeypatch.setenv("TURNOUT_STATE_DIR", "/var/lib/turnout")
    assert load_settings(None, {"repository": tmp_path}).state_dir == Path("/var/lib/turnout")
    assert load_settings(None, {"state_dir": tmp_path / "s"}).state_dir == tmp_path / "s", "a flag wins"


def test_a_supervisors_processes_inherit_its_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor writes its settings to a YAML file for its processes; they must not work the
    default out again (in another environment it could differ) but share the supervisor's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "one"))
    settings = load_settings(None, {"repository": tmp_path, "processes": 2})
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude={"processes", "worker_broker"})))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "other"))
    assert load_settings(config, {}).state_dir == settings.state_dir
