"""Tracing is decided once, from OpenTelemetry's standard environment: off unless an exporter is named."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, TraceIdRatioBased

from gateway.telemetry.tracing_setup import RpcConventions, TracingSetup, TracingSetupError, tracing_from_environment

OTEL_VARIABLES = (
    "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SEMCONV_STABILITY_OPT_IN", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
)  # fmt: skip


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@contextmanager
def built(monkeypatch: pytest.MonkeyPatch, **variables: str) -> Iterator[TracingSetup]:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    setup = tracing_from_environment("1.2.3")
    assert setup is not None
    try:
        yield setup
    finally:
        setup.provider.shutdown()


@pytest.mark.parametrize(
    "variables",
    [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}],
    ids=["unset", "none", "sdk-disabled"],
)
def test_tracing_is_off_unless_an_exporter_is_named(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    # ...and so the composition root (gateway.app.tracing_observer) registers no observer. (gateway.app
    # is not imported here: its wire messages and tritonclient's cannot share one test process.)
    assert tracing_from_environment("1.2.3") is None


def test_a_named_exporter_gets_a_batch_processor_and_the_sdk_reads_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    with built(monkeypatch, OTEL_TRACES_EXPORTER="console", **variables) as setup:
        (processor,) = setup.processor._span_processors
        assert isinstance(processor, BatchSpanProcessor)
        assert isinstance(processor._batch_processor._exporter, ConsoleSpanExporter)
        sampler = setup.provider.sampler
        assert isinstance(sampler, TraceIdRatioBased) and sampler.rate == 0.25
        assert setup.conventions is RpcConventions.EXPERIMENTAL


def test_the_service_is_turnout_unless_the_environment_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with built(monkeypatch, OTEL_TRACES_EXPORTER="console", OTEL_TRACES_SAMPLER="always_off") as setup:
        assert setup.provider.sampler is ALWAYS_OFF
        attributes = setup.provider.resource.attributes
        assert (attributes["service.name"], attributes["service.version"]) == ("turnout", "1.2.3")
    with built(monkeypatch, OTEL_SERVICE_NAME="scoring", OTEL_RESOURCE_ATTRIBUTES="deployment.environment=eu") as setup:
        attributes = setup.provider.resource.attributes
        assert (attributes["service.name"], attributes["deployment.environment"]) == ("scoring", "eu")


@pytest.mark.parametrize(
    ("opt_in", "conventions"),
    [("http", RpcConventions.EXPERIMENTAL), ("http,rpc", RpcConventions.STABLE), ("rpc/dup", RpcConventions.BOTH)],
)
def test_the_rpc_conventions_follow_the_stability_opt_in(
    monkeypatch: pytest.MonkeyPatch, opt_in: str, conventions: RpcConventions
) -> None:
    with built(monkeypatch, OTEL_TRACES_EXPORTER="console", OTEL_SEMCONV_STABILITY_OPT_IN=opt_in) as setup:
        assert setup.conventions is conventions


def test_an_exporter_nobody_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(TracingSetupError, match="'zipkin', but no such trace exporter is installed"):
        tracing_from_environment("1.2.3")


def test_otlp_without_the_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    # As if turnout[otlp] were not installed: its module cannot be imported.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(TracingSetupError, match=r"install turnout\[otlp\]"):
        tracing_from_environment("1.2.3")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with pytest.raises(TracingSetupError, match="install opentelemetry-exporter-otlp-proto-http"):
        tracing_from_environment("1.2.3")
