"""Whether to trace, decided once from OpenTelemetry's standard environment, and the SDK built for it.

Tracing is off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``, or any other
that an installed package registers under the ``opentelemetry_traces_exporter`` entry points, as
OpenTelemetry's own auto-configuration finds them), and ``OTEL_SDK_DISABLED`` is not true. That is
stricter than OpenTelemetry's default, which exports to OTLP when the variable is unset: a gateway
sends nothing to a collector nobody asked for. When it is off, nothing here is built.

Everything else is the SDK's: it reads the sampler (``OTEL_TRACES_SAMPLER``, ``_ARG``), the resource
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), the batch processor's limits (``OTEL_BSP_*``)
and the OTLP exporter's endpoint, headers, TLS and timeout (``OTEL_EXPORTER_OTLP_*``) itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib.metadata import entry_points

from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

_EXPORTER_ENTRY_POINTS = "opentelemetry_traces_exporter"
_DEFAULT_SERVICE_NAME = "turnout"
# Which package brings each OTLP transport, for the message when it is missing.
_OTLP_EXTRAS = {"otlp_proto_grpc": "turnout[otlp]", "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http"}


class TracingSetupError(Exception):
    """Tracing was asked for in a way this installation cannot honour (an exporter is not installed)."""


class RpcConventions(Enum):
    """Which RPC semantic conventions the spans carry, as ``OTEL_SEMCONV_STABILITY_OPT_IN`` chooses.

    Instrumentations keep the experimental conventions (up to semconv 1.37: ``rpc.system``,
    ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``) unless the operator opts in to the
    newer ones (``rpc.system.name``, ``rpc.method`` as ``service/method``, ``rpc.response.status_code``)
    with ``rpc``, or to both with ``rpc/dup``.
    """

    EXPERIMENTAL = "experimental"
    STABLE = "stable"
    BOTH = "both"


@dataclass(frozen=True)
class TracingSetup:
    """The SDK's provider (its sampler, id generator and resource), the span processors that take the
    finished spans (every exporter's, behind one), and the conventions chosen."""

    provider: TracerProvider
    processor: SynchronousMultiSpanProcessor
    processors: tuple[SpanProcessor, ...]  # the ones behind ``processor``
    conventions: RpcConventions = RpcConventions.EXPERIMENTAL

    @classmethod
    def of(
        cls,
        processors: Sequence[SpanProcessor],
        sampler: Sampler | None = None,
        resource: Resource | None = None,
        conventions: RpcConventions = RpcConventions.EXPERIMENTAL,
    ) -> TracingSetup:
        """A provider whose spans go to ``processors``; without a ``sampler``, the SDK reads the environment's."""
        processor = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
        for each in processors:
            processor.add_span_processor(each)
        provider = TracerProvider(sampler, resource, shutdown_on_exit=False, active_span_processor=processor)
        return cls(provider, processor, tuple(processors), conventions)


def tracing_from_environment(service_version: str, environ: Mapping[str, str] | None = None) -> TracingSetup | None:
    """The tracing the environment asks for; None when it asks for none (and then nothing is built).

    ``environ`` is read for the choices made here; the SDK reads ``os.environ`` itself for the rest,
    so callers other than tests leave it out.
    """
    env = os.environ if environ is None else environ
    names = [name.strip() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if _is_true(env.get("OTEL_SDK_DISABLED", "")) or not names or names == ["none"]:
        return None
    exporters = [_exporter(name, env) for name in names if name != "none"]
    # One export thread per exporter; spans are handed to it in batches, off every request's path.
    return TracingSetup.of(
        [BatchSpanProcessor(exporter) for exporter in exporters],
        resource=_resource(service_version),
        conventions=_conventions(env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "")),
    )


def _is_true(value: str) -> bool:
    return value.strip().lower() == "true"


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    """The exporter registered under ``name``; ``otlp`` is the transport ``OTEL_EXPORTER_OTLP_PROTOCOL`` says."""
    entry_name = name
    if name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        entry_name = "otlp_proto_http" if protocol.strip() == "http/protobuf" else "otlp_proto_grpc"
    found = entry_points(group=_EXPORTER_ENTRY_POINTS, name=entry_name)
    hint = f"install {_OTLP_EXTRAS[entry_name]}" if entry_name in _OTLP_EXTRAS else "is its package installed?"
    try:
        exporter_class = next(iter(found)).load()
    except (StopIteration, ImportError):  # not registered, or registered by a package only half there
        raise TracingSetupError(
            f"OTEL_TRACES_EXPORTER asks for {name!r}, but no such trace exporter is installed: {hint}"
        ) from None
    exporter: SpanExporter = exporter_class()
    return exporter


def _resource(service_version: str) -> Resource:
    """The SDK's resource from the environment; ``service.name`` is ``turnout`` and ``service.version``
    this package's, unless the environment names others."""
    detected = Resource.create()
    attributes = dict(detected.attributes)
    if str(attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        attributes[SERVICE_NAME] = _DEFAULT_SERVICE_NAME
    attributes.setdefault(SERVICE_VERSION, service_version)
    return Resource(attributes, detected.schema_url)


def _conventions(opt_in: str) -> RpcConventions:
    chosen = {value.strip() for value in opt_in.split(",")}
    if "rpc/dup" in chosen:
        return RpcConventions.BOTH
    return RpcConventions.STABLE if "rpc" in chosen else RpcConventions.EXPERIMENTAL
