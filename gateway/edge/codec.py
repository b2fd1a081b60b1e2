"""Every conversion between protocol messages and the gateway's domain objects, in one module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway import headers
from gateway.errors import InvalidArgument, echoed
from gateway.serving.inference_types import InferRequest, InferResponse
from gateway.serving.model_views import (
    IndexEntry,
    ModelConfigView,
    ModelMetadataView,
    StatisticsView,
    VersionPolicyView,
)
from gateway.serving.statistics import Duration
from gateway.serving.tensors import Tensor, tensor_from_raw, tensor_from_values
from gateway.wire import inference_pb2 as pb
from gateway.wire import model_config_pb2 as config_pb
from runtimes.contract import TensorSpec

# Which InferTensorContents field carries each datatype's typed values (FP16 has none: raw only).
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_CONFIG_TYPE = {
    "BOOL": config_pb.TYPE_BOOL,
    "UINT8": config_pb.TYPE_UINT8,
    "UINT16": config_pb.TYPE_UINT16,
    "UINT32": config_pb.TYPE_UINT32,
    "UINT64": config_pb.TYPE_UINT64,
    "INT8": config_pb.TYPE_INT8,
    "INT16": config_pb.TYPE_INT16,
    "INT32": config_pb.TYPE_INT32,
    "INT64": config_pb.TYPE_INT64,
    "FP16": config_pb.TYPE_FP16,
    "FP32": config_pb.TYPE_FP32,
    "FP64": config_pb.TYPE_FP64,
    "BYTES": config_pb.TYPE_STRING,
}



def _parameter_value(parameter: Any) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def infer_request_from_proto(message: Any, max_elements: int) -> InferRequest:
    """Decode a ModelInferRequest; raw contents are kept as they are, checked against their shapes.

    Typed contents and raw BYTES are left unfinished (:mod:`gateway.serving.tensors`): their
    element-by-element work waits until the model's checks have passed. ``max_elements``: the most
    elements one tensor may have.
    """
    raw = message.raw_input_contents
    inputs = message.inputs
    if raw:
        if len(raw) != len(inputs):
            raise InvalidArgument(
                f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; it needs one per input"
            )
        for tensor in inputs:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input {echoed(tensor.name)} sets contents while the request uses raw_input_contents; "
                    "use one or the other for every input"
                )
        decoded = [
            tensor_from_raw(tensor.name, tensor.datatype, tuple(tensor.shape), data, max_elements)
            for tensor, data in zip(inputs, raw, strict=True)
        ]
    else:
        decoded = [_typed_tensor(tensor, max_elements) for tensor in inputs]
    outputs = []
    for requested in message.outputs:
        if "classification" in requested.parameters:
            raise InvalidArgument(f"output {echoed(requested.name)}: the classification extension is not supported")
        outputs.append(requested.name)
    parameters: dict[str, Any] = {}
    if message.parameters:  # usually empty: skip building an iterator over the map
        parameters = {key: _parameter_value(value) for key, value in message.parameters.items()}
    request = InferRequest(message.model_name, message.model_version, message.id, decoded, outputs, parameters)
    for tensor in decoded:
        if tensor.finish is not None:
            request.unfinished = True
            break
    return request


def _typed_tensor(tensor: Any, max_elements: int) -> Tensor:
    field = _TYPED_FIELD.get(tensor.datatype)
    if field is None:
        if tensor.datatype == "FP16":
            raise InvalidArgument(
                f"input {echoed(tensor.name)}: FP16 has no typed contents; send it in raw_input_contents"
            )
        # Let the tensor decoder name the unknown datatype.
        return tensor_from_values(tensor.name, tensor.datatype, tensor.shape, [], max_elements)
    values = getattr(tensor.contents, field)
    try:
        return tensor_from_values(tensor.name, tensor.datatype, tensor.shape, values, max_elements)
    except InvalidArgument as error:
        raise InvalidArgument(f"{error} (typed values of {tensor.datatype} go in contents.{field})") from None


def infer_response_to_proto(response: InferResponse, routing_parameters: bool = False) -> Any:
    """Encode a response: every output's bytes in raw_output_contents, in output order.

    Streams have no per-response trailers, so there the routing decision travels as response
    parameters (``routing_parameters``) under the same names as the unary call's trailing metadata.
    """
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    # add() and one extend() build the repeated fields in place, without temporary messages.
    for tensor in response.outputs:
        message.outputs.add(name=tensor.name, datatype=tensor.raw.datatype, shape=tensor.raw.shape)
    # bytes() copies a view out of the batch's buffer (protobuf takes bytes only); bytes stay as they are.
    message.raw_output_contents.extend([bytes(tensor.raw.data) for tensor in response.outputs])
    if routing_parameters:
        for key, value in routing_trailers(response):
            message.parameters[key].string_param = value
    return message


def routing_trailers(response: InferResponse) -> tuple[tuple[str, str], ...]:
    """Which version answered, on which arm, under which policy generation: trailing metadata."""
    return (
        (headers.VERSION, response.model_version),
        (headers.ARM, response.arm),
        (headers.GENERATION, str(response.generation)),
    )


def text_metadata(metadata: Any) -> dict[str, str]:
    """The request's text headers (binary ``-bin`` ones are left out), for routing to read."""
    return {key: value for key, value in metadata or () if isinstance(value, str)}


def _tensor_metadata(specs: Sequence[TensorSpec]) -> list[Any]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


def model_metadata_to_proto(view: ModelMetadataView) -> Any:
    """ModelMetadata: the version's signature, and every READY version of the model."""
    return pb.ModelMetadataResponse(
        name=view.name,
        versions=view.ready_versions,
        platform=view.platform,
        inputs=_tensor_metadata(view.inputs),
        outputs=_tensor_metadata(view.outputs),
    )


def _version_policy(policy: VersionPolicyView) -> Any:
    if policy.kind == "all":
        return config_pb.ModelVersionPolicy(all=config_pb.ModelVersionPolicy.All())
    if policy.kind == "specific":
        return config_pb.ModelVersionPolicy(specific=config_pb.ModelVersionPolicy.Specific(versions=policy.specific))
    return config_pb.ModelVersionPolicy(latest=config_pb.ModelVersionPolicy.Latest(num_versions=policy.latest_count))


def model_config_to_proto(view: ModelConfigView) -> Any:
    """A Triton-shaped ModelConfig; the artifact's sha256 travels in ``parameters``."""
    config = config_pb.ModelConfig(
        name=view.name,
        version_policy=_version_policy(view.version_policy),
        instance_group=[
            config_pb.ModelInstanceGroup(
                name=view.name, count=view.instance_count, kind=config_pb.ModelInstanceGroup.KIND_CPU
            )
        ],
        parameters={
            "artifact_sha256": config_pb.ModelParameter(string_value=view.sha256),
            "state": config_pb.ModelParameter(string_value=view.state),
        },
    )
    if view.artifact_file:
        config.default_model_filename = view.artifact_file
    if not view.loaded:
        return config
    config.platform = view.platform
    config.backend = view.runtime
    config.max_batch_size = view.max_batch_size
    reshapes = dict(view.reshapes)
    for spec in view.inputs:
        tensor = config.input.add(name=spec.name, data_type=_CONFIG_TYPE[spec.datatype], dims=spec.shape)
        if spec.name in reshapes:
            tensor.reshape.shape.extend(reshapes[spec.name])
    for spec in view.outputs:
        tensor = config.output.add(name=spec.name, data_type=_CONFIG_TYPE[spec.datatype], dims=spec.shape)
        if spec.name in reshapes:
            tensor.reshape.shape.extend(reshapes[spec.name])
    batching = view.batching
    if batching is not None:
        config.dynamic_batching.CopyFrom(
            config_pb.ModelDynamicBatching(
                preferred_batch_size=batching.preferred_batch_sizes,
                max_queue_delay_microseconds=batching.max_queue_delay_us,
                default_queue_policy=config_pb.ModelQueuePolicy(
                    max_queue_size=batching.max_queue_size,
                    default_timeout_microseconds=batching.queue_timeout_us,
                ),
            )
        )
    return config


def _duration(duration: Duration) -> Any:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def statistics_to_proto(view: StatisticsView) -> Any:
    snapshot = view.snapshot
    return pb.ModelStatistics(
        name=view.model,
        version=view.version,
        last_inference=snapshot.last_inference_ms,
        inference_count=snapshot.inference_count,
        execution_count=snapshot.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(snapshot.success),
            fail=_duration(snapshot.fail),
            queue=_duration(snapshot.queue),
            compute_input=_duration(snapshot.compute_input),
            compute_infer=_duration(snapshot.compute_infer),
            compute_output=_duration(snapshot.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(d.compute_input),
                compute_infer=_duration(d.compute_infer),
                compute_output=_duration(d.compute_output),
            )
            for size, d in snapshot.batches.items()
        ],
    )


def index_to_proto(entries: Sequence[IndexEntry]) -> Any:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(name=e.name, version=e.version, state=e.state, reason=e.reason)
            for e in entries
        ]
    )
