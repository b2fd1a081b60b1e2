"""Triton's command-line flags become Turnout's, or are refused by name; no sockets, just tokens."""

from __future__ import annotations

import pytest

from gateway.triton_flags import TritonFlagError, parse_bool, translate_triton_flags

NATIVE = frozenset({"--repository", "--port", "--host", "--poll-interval-s", "--strict-readiness", "--state-dir"})


def translate(*arguments: str) -> list[str]:
    return translate_triton_flags(arguments, NATIVE)


def problems(*arguments: str) -> tuple[str, ...]:
    with pytest.raises(TritonFlagError) as refused:
        translate(*arguments)
    return refused.value.problems


@pytest.mark.parametrize(
    ("triton", "turnout"),
    [
        (["--model-repository", "/models"], "--repository=/models"),
        (["--model-store", "/models"], "--repository=/models"),
        (["--grpc-port", "8101"], "--port=8101"),
        (["--grpc-address", "127.0.0.1"], "--host=127.0.0.1"),
        (["--exit-timeout-secs", "45"], "--grace-period-s=45"),
        (["--grpc-keepalive-time", "7200000"], "--keepalive-time-s=7200.0"),
        (["--grpc-keepalive-timeout", "20000"], "--keepalive-timeout-s=20.0"),
        (["--grpc-keepalive-timeout", "1500"], "--keepalive-timeout-s=1.5"),
        (["--model-load-thread-count", "8"], "--model-load-threads=8"),
    ],
)
def test_flags_with_a_turnout_setting_are_renamed_in_both_spellings(triton: list[str], turnout: str) -> None:
    assert translate(*triton) == [turnout], "--flag value"
    assert translate(f"{triton[0]}={triton[1]}") == [turnout], "--flag=value"


def test_turnout_flags_and_their_values_pass_through_in_order() -> None:
    arguments = ["--port", "0", "--state-dir=/tmp/s", "--strict-readiness", "false", "--prot", "9"]
    assert translate(*arguments) == arguments, "unknown names are left for argparse to report"


def test_translated_flags_follow_the_native_ones() -> None:
    assert translate("--grpc-port=9000", "--state-dir", "/s") == ["--state-dir", "/s", "--port=9000"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--model-control-mode=none"], ["--poll-interval-s=0"]),
        (["--model-control-mode=none", "--repository-poll-secs=5"], ["--poll-interval-s=0"]),
        (["--model-control-mode", "poll", "--repository-poll-secs", "5"], ["--poll-interval-s=5"]),
        (["--model-control-mode=POLL"], []),  # Turnout's own interval, it polls by default
        (["--repository-poll-secs=7"], ["--poll-interval-s=7"]),
    ],
)
def test_model_control_mode_decides_polling(arguments: list[str], expected: list[str]) -> None:
    assert translate(*arguments) == expected


def test_explicit_model_control_and_unknown_modes_are_refused() -> None:
    (explicit,) = problems("--model-control-mode=explicit")
    assert "--model-control-mode=explicit" in explicit and "does not support" in explicit
    (odd,) = problems("--model-control-mode", "sometimes")
    assert "expected none, poll or explicit" in odd
    assert problems("--load-model=digits") == ("Triton flag --load-model has no Turnout equivalent",)


@pytest.mark.parametrize(
    ("arguments", "level"),
    [
        (["--log-verbose=1"], "DEBUG"),
        (["--log-verbose", "2", "--log-info=false"], "DEBUG"),
        (["--log-verbose=0"], "INFO"),
        (["--log-verbose=true"], "DEBUG"),  # Triton reads true/false as 1/0 here
        (["--log-info=false"], "WARNING"),
        (["--log-info", "off", "--log-warning", "0"], "ERROR"),
        (["--log-info=false", "--log-warning=false", "--log-error=false"], "ERROR"),
        (["--log-error=true"], "INFO"),
        (["--log-info"], "INFO"),  # a bare boolean is true
    ],
)
def test_log_flags_become_the_lowest_level_triton_would_log(arguments: list[str], level: str) -> None:
    assert translate(*arguments) == [f"--log-level={level}"]


def test_malformed_log_values_are_refused() -> None:
    (problem,) = problems("--log-verbose=loud")
    assert "Triton log flags" in problem


@pytest.mark.parametrize(
    "accepted",
    [
        ["--allow-grpc=true"],
        ["--allow-grpc", "ON"],
        ["--allow-http=false"],
        ["--allow-http", "0"],
        ["--allow-metrics=true", "--allow-gpu-metrics=off", "--allow-cpu-metrics", "false"],
        ["--strict-model-config=false"],
        ["--exit-on-error=false"],
        ["--reuse-grpc-port=false"],
        ["--grpc-keepalive-permit-without-calls=1"],
        ["--grpc-http2-max-ping-strikes=0"],
        ["--grpc-http2-min-recv-ping-interval-without-data", "10000"],
    ],
)
def test_flags_whose_value_is_what_turnout_does_are_accepted_as_no_ops(accepted: list[str]) -> None:
    assert translate(*accepted) == []


@pytest.mark.parametrize(
    ("flag", "why"),
    [
        ("--allow-grpc=false", "serves gRPC only"),
        ("--allow-http=true", "serves gRPC only"),
        ("--allow-gpu-metrics=true", "no GPU or CPU metrics"),
        ("--strict-model-config=true", "ONNX file"),
        ("--grpc-http2-max-ping-strikes=2", "never closes"),
    ],
)
def test_values_turnout_cannot_honour_are_refused_with_the_accepted_one(flag: str, why: str) -> None:
    (problem,) = problems(flag)
    name = flag.partition("=")[0]
    assert problem.startswith(f"Triton flag {flag} has no Turnout equivalent") and why in problem
    assert f"{name}=" in problem.rpartition(";")[2], "says which value is accepted"


def test_every_flag_without_an_equivalent_is_named_in_one_go() -> None:
    found = problems(
        "--grpc-infer-allocation-pool-size=8",
        "--http-port",
        "8000",
        "--grpc-port=8001",
        "--grpc-max-connection-age=1000",
        "--backend-config=onnxruntime,default-max-batch-size=4",
        "--pinned-memory-pool-byte-size",
        "268435456",
        "--cuda-memory-pool-byte-size=0:0",
        "--disable-auto-complete-config",
        "--http-address=0.0.0.0",
    )
    assert found == tuple(
        f"Triton flag --{name} has no Turnout equivalent"
        for name in (
            "grpc-infer-allocation-pool-size",
            "http-port",
            "grpc-max-connection-age",
            "backend-config",
            "pinned-memory-pool-byte-size",
            "cuda-memory-pool-byte-size",
            "disable-auto-complete-config",
            "http-address",
        )
    )


def test_a_valued_flag_without_its_value_is_refused() -> None:
    assert problems("--grpc-port") == ("Triton flag --grpc-port needs a value",)
    assert problems("--grpc-port", "--log-info=true") == ("Triton flag --grpc-port needs a value",)


def test_non_numeric_milliseconds_are_refused() -> None:
    assert problems("--grpc-keepalive-time=soon") == ("Triton flag --grpc-keepalive-time=soon: not a number",)


def test_one_repository_only() -> None:
    assert translate("--model-repository=/m", "--model-store=/m") == ["--repository=/m"], "the same one twice is fine"
    (problem,) = problems("--model-repository=/a", "--model-repository=/b")
    assert "one model repository" in problem and "/a, /b" in problem


def test_everything_after_a_double_dash_is_left_alone() -> None:
    assert translate("--", "--http-port=1") == ["--", "--http-port=1"]


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("On", True), ("1", True), ("FALSE", False), ("off", False)]
)
def test_booleans_read_as_triton_reads_them(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_other_words_are_not_booleans() -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool("maybe")


def test_metrics_flags_become_turnouts_and_allow_metrics_false_turns_the_port_off() -> None:
    assert translate("--allow-metrics=false") == ["--metrics-port=0"]
    assert translate("--allow-metrics", "off") == ["--metrics-port=0"]
    assert translate("--metrics-address", "127.0.0.1") == ["--metrics-host=127.0.0.1"]
    # Turnout's own --metrics-port (Triton's spelling too) passes through as it is.
    assert translate_triton_flags(["--metrics-port", "9102"], {*NATIVE, "--metrics-port"}) == ["--metrics-port", "9102"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (
            ["--grpc-use-ssl=true", "--grpc-server-cert", "/c.pem", "--grpc-server-key=/k.pem"],
            ["--tls-cert-file=/c.pem", "--tls-key-file=/k.pem"],
        ),
        (
            ["--grpc-use-ssl", "1", "--grpc-server-cert=/c", "--grpc-server-key=/k"],
            ["--tls-cert-file=/c", "--tls-key-file=/k"],
        ),
        # Triton reads the root certificate only for mutual TLS.
        (
            ["--grpc-use-ssl", "--grpc-server-cert=/c", "--grpc-server-key=/k", "--grpc-root-cert=/ca"],
            ["--tls-cert-file=/c", "--tls-key-file=/k"],
        ),
        (
            ["--grpc-use-ssl-mutual=true", "--grpc-server-cert=/c", "--grpc-server-key=/k", "--grpc-root-cert=/ca"],
            ["--tls-cert-file=/c", "--tls-key-file=/k", "--tls-client-ca-file=/ca"],
        ),
        (
            ["--grpc-use-ssl=true", "--grpc-use-ssl-mutual", "0", "--grpc-server-cert=/c", "--grpc-server-key=/k"],
            ["--tls-cert-file=/c", "--tls-key-file=/k"],
        ),
        # Without --grpc-use-ssl the files are unused, as in Triton.
        (["--grpc-use-ssl=false", "--grpc-server-cert=/c", "--grpc-server-key=/k"], []),
        (["--grpc-server-cert=/c", "--grpc-root-cert=/ca"], []),
    ],
)
def test_tls_flags_become_turnouts(arguments: list[str], expected: list[str]) -> None:
    assert translate(*arguments) == expected


def test_grpc_use_ssl_mutual_turns_tls_on_whatever_its_value_as_triton_does() -> None:
    assert translate("--grpc-use-ssl-mutual=false", "--grpc-server-cert=/c", "--grpc-server-key=/k") == [
        "--tls-cert-file=/c",
        "--tls-key-file=/k",
    ]


def test_tls_without_its_files_is_refused_naming_the_missing_flags() -> None:
    assert problems("--grpc-use-ssl=true", "--grpc-server-key=/k") == (
        "Triton flag --grpc-use-ssl needs --grpc-server-cert",
    )
    assert problems("--grpc-use-ssl-mutual", "--grpc-server-cert=/c", "--grpc-server-key=/k") == (
        "Triton flag --grpc-use-ssl-mutual needs --grpc-root-cert",
    )
    assert problems("--grpc-use-ssl=maybe") == ("Triton flag --grpc-use-ssl=maybe: not a boolean",)
def test_a_restricted_model_repository_protocol_becomes_the_header_loads_need() -> None:
    assert translate("--grpc-restricted-protocol=model-repository:x-admin-key=s3cret") == [
        "--model-repository-header=x-admin-key=s3cret"
    ]
    assert translate("--grpc-restricted-protocol", "model-repository:k=v") == ["--model-repository-header=k=v"]
    (other,) = problems("--grpc-restricted-protocol=model-repository,inference:k=v")
    assert "restricts only model-repository, not inference" in other
    (malformed,) = problems("--grpc-restricted-protocol=model-repository")
    assert "PROTOCOLS:KEY=VALUE" in malformed
