"""Wire compatibility of protos/inference.proto and protos/model_config.proto with tritonclient's own definitions.

Our generated module and tritonclient's ``service_pb2`` both register ``inference.*``
in protobuf's default descriptor pool, so they cannot live in one interpreter. Every
import of either happens in a child interpreter (``sys.executable -c``) that prints
JSON on its last stdout line; this process only compares the JSON. No sockets are used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

OUR_FILE = "gateway/wire/inference.proto"
OUR_CONFIG_FILE = "gateway/wire/model_config.proto"
SERVICE = "inference.GRPCInferenceService"

# Triton's RPCs, in the order of its service definition. All are unary and take
# <Method>Request / return <Method>Response, except ModelStreamInfer (see _expected_methods).
EXPECTED_METHODS = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
]

# ModelConfig fields the gateway relies on; the rest of Triton's surface is optional for us.
REQUIRED_MODEL_CONFIG_FIELDS = [
    "name",
    "platform",
    "backend",
    "runtime",
    "version_policy",
    "max_batch_size",
    "input",
    "output",
    "instance_group",
    "default_model_filename",
    "dynamic_batching",
    "parameters",
]

OURS_PRELUDE = "from gateway.wire import inference_pb2, model_config_pb2\n"
TRITON_PRELUDE = "from tritonclient.grpc import model_config_pb2, service_pb2\n"

# Describes descriptors as plain JSON. Each field is
# [number, type, label, referenced message/enum full name or "", has_presence].
DESCRIBE = """
import json
from google.protobuf.descriptor import FieldDescriptor

TYPE_NAMES = {
    value: name for name, value in vars(FieldDescriptor).items()
    if name.startswith("TYPE_") and isinstance(value, int)
}

def _label(field):
    repeated = getattr(field, "is_repeated", None)
    if repeated is None:
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
    return "repeated" if repeated else "optional"

def describe(files):
    out = {"files": {}, "messages": {}, "enums": {}, "services": {}}

    def add_enum(enum):
        out["enums"][enum.full_name] = {v.name: v.number for v in enum.values}

    def add_message(message):
        fields = {}
        for f in message.fields:
            ref = f.message_type or f.enum_type
            fields[f.name] = [
                f.number, TYPE_NAMES[f.type], _label(f), ref.full_name if ref else "", bool(f.has_presence)
            ]
        out["messages"][message.full_name] = {
            "file": message.file.name,
            "map_entry": bool(message.GetOptions().map_entry),
            "fields": fields,
            "oneofs": {o.name: sorted(f.name for f in o.fields) for o in message.oneofs},
        }
        for enum in message.enum_types:
            add_enum(enum)
        for nested in message.nested_types:
            add_message(nested)

    for fd in files:
        out["files"][fd.name] = {"package": fd.package, "dependencies": [d.name for d in fd.dependencies]}
        if fd.package != "inference":
            continue
        for enum in fd.enum_types_by_name.values():
            add_enum(enum)
        for message in fd.message_types_by_name.values():
            add_message(message)
        for service in fd.services_by_name.values():
            out["services"][service.full_name] = [
                [
                    m.name,
                    m.input_type.full_name,
                    m.output_type.full_name,
                    m.client_streaming,
                    m.server_streaming,
                ]
                for m in service.methods
            ]
    return out
"""

# Builds populated messages with OUR classes. Emits, per sample, the serialized bytes,
# the deterministic serialization and the JSON-style dict view.
BUILD_WITH_OURS = """
import json
import struct

from google.protobuf import json_format

from gateway.wire import inference_pb2 as pb
from gateway.wire import model_config_pb2 as mc


def bytes_tensor(items):
    # BYTES raw form: 4-byte little-endian length before each element.
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


samples = {}

req = pb.ModelInferRequest(model_name="iris", model_version="3", id="req-1")
req.parameters["sequence_id"].int64_param = -42
req.parameters["sequence_start"].bool_param = True
req.parameters["priority"].uint64_param = 2**63 + 5
req.parameters["temperature"].double_param = 0.25
req.parameters["tag"].string_param = "canary"
x = req.inputs.add(name="x", datatype="FP32", shape=[2, 2])
x.parameters["binary_data_size"].int64_param = 16
req.inputs.add(name="s", datatype="BYTES", shape=[2])
req.outputs.add(name="y").parameters["classification"].int64_param = 3
req.outputs.add(name="z")
req.raw_input_contents.append(struct.pack("<4f", 1.0, 2.0, 3.0, 4.0))
req.raw_input_contents.append(bytes_tensor([b"ab", b"\\x00\\xff"]))
samples["ModelInferRequest"] = req

typed = pb.ModelInferRequest(model_name="typed")
for name, datatype, field, values in [
    ("b", "BOOL", "bool_contents", [True, False]),
    ("i", "INT32", "int_contents", [-1, 2**31 - 1]),
    ("l", "INT64", "int64_contents", [-(2**63), 7]),
    ("u", "UINT32", "uint_contents", [2**32 - 1, 0]),
    ("ul", "UINT64", "uint64_contents", [2**64 - 1, 1]),
    ("f", "FP32", "fp32_contents", [0.5, -1.5]),
    ("d", "FP64", "fp64_contents", [1e300, -2.25]),
    ("s", "BYTES", "bytes_contents", [b"one", b""]),
]:
    tensor = typed.inputs.add(name=name, datatype=datatype, shape=[2])
    getattr(tensor.contents, field).extend(values)
samples["ModelInferRequest#typed"] = typed

resp = pb.ModelInferResponse(model_name="iris", model_version="3", id="req-1")
resp.parameters["triton_final_response"].bool_param = True
resp.outputs.add(name="probs", datatype="FP32", shape=[2, 3])
resp.outputs.add(name="label", datatype="BYTES", shape=[2])
resp.outputs.add(name="empty", datatype="INT64", shape=[0])
resp.outputs[0].parameters["binary_data_size"].int64_param = 24
resp.raw_output_contents.append(struct.pack("<6f", 0.1, 0.2, 0.7, 0.5, 0.25, 0.25))
resp.raw_output_contents.append(bytes_tensor([b"setosa", b"virginica"]))
resp.raw_output_contents.append(b"")
samples["ModelInferResponse"] = resp
samples["ModelStreamInferResponse"] = pb.ModelStreamInferResponse(infer_response=resp)
samples["ModelStreamInferResponse#error"] = pb.ModelStreamInferResponse(error_message="model not found")

cfg = pb.ModelConfigResponse().config
cfg.name = "iris"
cfg.platform = "onnxruntime_onnx"
cfg.backend = "onnxruntime"
cfg.runtime = "libcustom.so"
cfg.version_policy.specific.versions.extend([1, 3])
cfg.max_batch_size = 8
inp = cfg.input.add(name="x", data_type=mc.TYPE_FP32, format=mc.ModelInput.FORMAT_NCHW, dims=[-1, 4])
inp.reshape.shape.extend([4])
inp.optional = True
inp.allow_ragged_batch = True
cfg.input.add(name="s", data_type=mc.TYPE_STRING, dims=[1], is_shape_tensor=True)
out = cfg.output.add(name="probs", data_type=mc.TYPE_BF16, dims=[3], label_filename="labels.txt")
out.is_non_linear_format_io = True
group = cfg.instance_group.add(name="cpu", kind=mc.ModelInstanceGroup.KIND_CPU, count=2, gpus=[0, 1])
group.profile.append("p1")
group.passive = True
group.host_policy = "numa0"
res = group.rate_limiter.resources.add(name="R1", count=4)
res.__setattr__("global", True)
group.rate_limiter.priority = 2
group.secondary_devices.add(kind=mc.ModelInstanceGroup.SecondaryDevice.KIND_NVDLA, device_id=1)
cfg.default_model_filename = "model.onnx"
cfg.cc_model_filenames["7.5"] = "model_t4.onnx"
cfg.metric_tags["team"] = "ml"
db = cfg.dynamic_batching
db.preferred_batch_size.extend([4, 8])
db.max_queue_delay_microseconds = 500
db.preserve_ordering = True
db.priority_levels = 2
db.default_priority_level = 1
db.default_queue_policy.timeout_action = mc.ModelQueuePolicy.DELAY
db.default_queue_policy.default_timeout_microseconds = 10_000
db.default_queue_policy.allow_timeout_override = True
db.default_queue_policy.max_queue_size = 64
db.priority_queue_policy[1].max_queue_size = 16
cfg.optimization.graph.level = 1
cfg.optimization.priority = mc.ModelOptimizationPolicy.PRIORITY_MAX
cfg.optimization.cuda.graphs = True
spec = cfg.optimization.cuda.graph_spec.add(batch_size=4)
spec.input["x"].dim.extend([4, 4])
spec.graph_lower_bound.batch_size = 1
spec.graph_lower_bound.input["x"].dim.extend([1, 4])
acc = cfg.optimization.execution_accelerators.cpu_execution_accelerator.add(name="openvino")
acc.parameters["precision"] = "FP16"
cfg.optimization.input_pinned_memory.enable = True
cfg.optimization.gather_kernel_buffer_threshold = 3
cfg.optimization.eager_batching = True
cfg.parameters["intra_op_thread_count"].string_value = "2"
warm = cfg.model_warmup.add(name="w", batch_size=1, count=2)
warm.inputs["x"].data_type = mc.TYPE_FP32
warm.inputs["x"].dims.extend([4])
warm.inputs["x"].random_data = True
cfg.model_operations.op_library_filename.append("libops.so")
cfg.model_transaction_policy.decoupled = True
cfg.batch_input.add(kind=mc.BatchInput.BATCH_ITEM_SHAPE, target_name=["t"], data_type=mc.TYPE_INT32)
cfg.batch_output.add(target_name=["probs"], source_input=["x"])
agent = cfg.model_repository_agents.agents.add(name="checksum")
agent.parameters["MD5:model.onnx"] = "abc"
cfg.response_cache.enable = True
control = cfg.model_metrics.metric_control.add()
control.metric_identifier.family = "nv_inference_request_duration"
control.histogram_options.buckets.extend([0.5, 1.0])
samples["ModelConfigResponse"] = pb.ModelConfigResponse(config=cfg)

seq = mc.ModelConfig(name="stateful", max_batch_size=4)
sb = seq.sequence_batching
sb.max_sequence_idle_microseconds = 1_000_000
ci = sb.control_input.add(name="START")
ci.control.add(kind=mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START, int32_false_true=[0, 1])
ci.control.add(kind=mc.ModelSequenceBatching.Control.CONTROL_SEQUENCE_READY, fp32_false_true=[0.0, 1.0])
ci.control.add(bool_false_true=[False, True], data_type=mc.TYPE_BOOL)
sb.oldest.max_candidate_sequences = 4
sb.oldest.preferred_batch_size.append(2)
state = sb.state.add(input_name="h_in", output_name="h_out", data_type=mc.TYPE_FP32, dims=[8])
state.initial_state.add(name="zero", data_type=mc.TYPE_FP32, dims=[8], zero_data=True)
state.use_growable_memory = True
sb.iterative_sequence = True
samples["ModelConfigResponse#sequence"] = pb.ModelConfigResponse(config=seq)

ens = mc.ModelConfig(name="pipeline", platform="ensemble")
ens.version_policy.latest.num_versions = 2
step = ens.ensemble_scheduling.step.add(model_name="pre", model_version=-1, model_namespace="ns")
step.input_map["IN"] = "raw"
step.output_map["OUT"] = "features"
ens.ensemble_scheduling.max_inflight_requests = 8
samples["ModelConfigResponse#ensemble"] = pb.ModelConfigResponse(config=ens)

meta = pb.ModelMetadataResponse(name="iris", versions=["1", "3"], platform="onnxruntime_onnx")
meta.inputs.add(name="x", datatype="FP32", shape=[-1, 4])
meta.outputs.add(name="probs", datatype="FP32", shape=[-1, 3])
samples["ModelMetadataResponse"] = meta
samples["ServerMetadataResponse"] = pb.ServerMetadataResponse(
    name="turnout", version="0.1.0", extensions=["model_repository", "statistics"]
)

stats = pb.ModelStatisticsResponse()
ms = stats.model_stats.add(name="iris", version="3", last_inference=1_700_000_000_000)
ms.inference_count = 10
ms.execution_count = 4
ms.inference_stats.success.count = 10
ms.inference_stats.success.ns = 123_456
ms.inference_stats.cache_miss.count = 1
ms.batch_stats.add(batch_size=4).compute_infer.ns = 99
ms.memory_usage.add(type="CPU", id=0, byte_size=2048)
ms.response_stats["0"].empty_response.count = 2
samples["ModelStatisticsResponse"] = stats

index = pb.RepositoryIndexResponse()
index.models.add(name="iris", version="3", state="READY", reason="")
index.models.add(name="old", version="1", state="UNAVAILABLE", reason="unloaded")
samples["RepositoryIndexResponse"] = index
load = pb.RepositoryModelLoadRequest(repository_name="", model_name="iris")
load.parameters["config"].string_param = '{"max_batch_size": 8}'
load.parameters["file:1/model.onnx"].bytes_param = b"\\x08\\x01"
samples["RepositoryModelLoadRequest"] = load
unload = pb.RepositoryModelUnloadRequest(model_name="iris")
unload.parameters["unload_dependents"].bool_param = False
unload.parameters["timeout"].int64_param = 5
samples["RepositoryModelUnloadRequest"] = unload

shm = pb.SystemSharedMemoryStatusResponse()
shm.regions["r"].CopyFrom(
    pb.SystemSharedMemoryStatusResponse.RegionStatus(name="r", key="/k", offset=8, byte_size=64)
)
samples["SystemSharedMemoryStatusResponse"] = shm
cuda = pb.CudaSharedMemoryStatusResponse()
cuda.regions["c"].CopyFrom(
    pb.CudaSharedMemoryStatusResponse.RegionStatus(name="c", device_id=1, byte_size=32)
)
samples["CudaSharedMemoryStatusResponse"] = cuda
samples["CudaSharedMemoryRegisterRequest"] = pb.CudaSharedMemoryRegisterRequest(
    name="c", raw_handle=b"\\x01\\x02", device_id=1, byte_size=32
)
trace = pb.TraceSettingRequest(model_name="iris")
trace.settings["trace_level"].value.extend(["TIMESTAMPS", "TENSORS"])
samples["TraceSettingRequest"] = trace
logs = pb.LogSettingsResponse()
logs.settings["log_info"].bool_param = True
logs.settings["log_verbose_level"].uint32_param = 2
logs.settings["log_format"].string_param = "ISO8601"
samples["LogSettingsResponse"] = logs

result = {
    key: {
        "hex": message.SerializeToString().hex(),
        "deterministic": message.SerializeToString(deterministic=True).hex(),
        "dict": json_format.MessageToDict(message, preserving_proto_field_name=True),
    }
    for key, message in samples.items()
}
print(json.dumps(result))
"""

# Parses the samples above with TRITONCLIENT's classes (stdin: the JSON printed above).
PARSE_WITH_TRITON = """
import json
import sys

import numpy as np
from google.protobuf import json_format

import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2, service_pb2

samples = json.loads(sys.stdin.read())
result = {}
for key, sample in samples.items():
    cls = getattr(service_pb2, key.split("#")[0])
    message = cls()
    message.ParseFromString(bytes.fromhex(sample["hex"]))
    result[key] = {
        "deterministic": message.SerializeToString(deterministic=True).hex(),
        "dict": json_format.MessageToDict(message, preserving_proto_field_name=True),
    }

# Decode the response exactly as tritonclient users do.
response = service_pb2.ModelInferResponse()
response.ParseFromString(bytes.fromhex(samples["ModelInferResponse"]["hex"]))
infer_result = grpcclient.InferResult(response)
probs = infer_result.as_numpy("probs")
label = infer_result.as_numpy("label")
empty = infer_result.as_numpy("empty")
config = service_pb2.ModelConfigResponse()
config.ParseFromString(bytes.fromhex(samples["ModelConfigResponse"]["hex"]))
result["_decoded"] = {
    "probs_shape": list(probs.shape),
    "probs": [round(float(v), 6) for v in probs.flatten()],
    "probs_dtype": str(probs.dtype),
    "label": [bytes(v).decode() for v in label.flatten()],
    "empty_shape": list(empty.shape),
    "model_version": infer_result.get_response().model_version,
    "final": infer_result.get_response().parameters["triton_final_response"].bool_param,
    "config_version_policy": config.config.version_policy.WhichOneof("policy_choice"),
    "config_scheduling": config.config.WhichOneof("scheduling_choice"),
    "config_input_type": model_config_pb2.DataType.Name(config.config.input[0].data_type),
    "config_output_type": model_config_pb2.DataType.Name(config.config.output[0].data_type),
    "config_queue_action": model_config_pb2.ModelQueuePolicy.TimeoutAction.Name(
        config.config.dynamic_batching.default_queue_policy.timeout_action
    ),
    "config_json_name": json.loads(json_format.MessageToJson(config.config))["name"],
    "is_float32": bool(probs.dtype == np.float32),
}
print(json.dumps(result))
"""

# Builds a request with tritonclient's own request builder (what `infer()` sends).
BUILD_WITH_TRITONCLIENT = """
import json

import numpy as np

import tritonclient.grpc as grpcclient
from tritonclient.grpc import _utils

x = grpcclient.InferInput("x", [2, 3], "FP32")
x.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
s = grpcclient.InferInput("s", [2], "BYTES")
s.set_data_from_numpy(np.array([b"hello", b"w\\x00rld"], dtype=np.object_))
outputs = [grpcclient.InferRequestedOutput("y", class_count=2), grpcclient.InferRequestedOutput("z")]
request = _utils._get_inference_request(
    model_name="iris",
    inputs=[x, s],
    model_version="2",
    request_id="abc",
    outputs=outputs,
    sequence_id=7,
    sequence_start=True,
    sequence_end=False,
    priority=1,
    timeout=1000,
    parameters={"tag": "canary", "ratio": 0.5, "flag": True, "n": 3},
)
print(json.dumps({"hex": request.SerializeToString().hex()}))
"""

# Parses that request with OUR classes and reports what the gateway would see.
PARSE_WITH_OURS = """
import json
import struct
import sys

from gateway.wire import inference_pb2 as pb

request = pb.ModelInferRequest()
request.ParseFromString(bytes.fromhex(json.loads(sys.stdin.read())["hex"]))


def param(p):
    which = p.WhichOneof("parameter_choice")
    return [which, getattr(p, which)]


def split_bytes(raw):
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        items.append(raw[offset : offset + length].hex())
        offset += length
    return items


print(json.dumps({
    "model_name": request.model_name,
    "model_version": request.model_version,
    "id": request.id,
    "parameters": {k: param(v) for k, v in sorted(request.parameters.items())},
    "inputs": [[t.name, t.datatype, list(t.shape), t.HasField("contents")] for t in request.inputs],
    "outputs": [[o.name, {k: param(v) for k, v in o.parameters.items()}] for o in request.outputs],
    "x": list(struct.unpack("<6f", request.raw_input_contents[0])),
    "s": split_bytes(request.raw_input_contents[1]),
    "raw_count": len(request.raw_input_contents),
}))
"""


def _run(code: str, stdin: str = "") -> Any:
    """Run ``code`` in a fresh interpreter at the repo root; return the JSON on its last stdout line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"child interpreter failed ({proc.returncode}):\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"child interpreter printed nothing; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


def _expected_methods() -> list[list[object]]:
    """[name, input type, output type, client streaming, server streaming] per RPC."""
    methods: list[list[object]] = []
    for name in EXPECTED_METHODS:
        if name == "ModelStreamInfer":
            methods.append(
                [name, "inference.ModelInferRequest", "inference.ModelStreamInferResponse", True, True]
            )
        else:
            methods.append([name, f"inference.{name}Request", f"inference.{name}Response", False, False])
    return methods


def _describe(prelude: str, files: str) -> dict[str, Any]:
    result: dict[str, Any] = _run(prelude + DESCRIBE + f"\nprint(json.dumps(describe({files})))\n")
    return result


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return _describe(OURS_PRELUDE, "[model_config_pb2.DESCRIPTOR, inference_pb2.DESCRIPTOR]")


@pytest.fixture(scope="module")
def triton() -> dict[str, Any]:
    return _describe(TRITON_PRELUDE, "[model_config_pb2.DESCRIPTOR, service_pb2.DESCRIPTOR]")


def test_our_protos_are_the_service_and_the_model_config_in_package_inference(ours: dict[str, Any]) -> None:
    # As Triton splits them: the service imports the model configuration, nothing else.
    assert ours["files"] == {
        OUR_FILE: {"package": "inference", "dependencies": [OUR_CONFIG_FILE]},
        OUR_CONFIG_FILE: {"package": "inference", "dependencies": []},
    }
    assert all(name.startswith("inference.") for name in [*ours["messages"], *ours["enums"]])


def test_every_message_field_we_define_matches_triton(ours: dict[str, Any], triton: dict[str, Any]) -> None:
    problems = []
    for name, message in ours["messages"].items():
        theirs = triton["messages"].get(name)
        if theirs is None:
            problems.append(f"{name}: not a Triton message")
            continue
        if message["map_entry"] != theirs["map_entry"]:
            problems.append(f"{name}: map_entry {message['map_entry']} != {theirs['map_entry']}")
        for field, spec in message["fields"].items():
            if field not in theirs["fields"]:
                problems.append(f"{name}.{field}: not in Triton")
            elif spec != theirs["fields"][field]:
                problems.append(f"{name}.{field}: ours {spec} != Triton {theirs['fields'][field]}")
    assert not problems, "\n".join(problems)


def test_field_numbers_are_unique_and_unreused(ours: dict[str, Any], triton: dict[str, Any]) -> None:
    # A number Triton uses for a field we left out must not be reused for something else.
    for name, message in ours["messages"].items():
        their_numbers = {spec[0]: field for field, spec in triton["messages"][name]["fields"].items()}
        for field, spec in message["fields"].items():
            assert their_numbers.get(spec[0]) == field, f"{name}.{field} uses number {spec[0]}"


def test_oneofs_match_triton(ours: dict[str, Any], triton: dict[str, Any]) -> None:
    for name, message in ours["messages"].items():
        theirs = triton["messages"][name]["oneofs"]
        for oneof, members in message["oneofs"].items():
            assert oneof in theirs, f"{name}: oneof {oneof} not in Triton"
            assert set(members) <= set(theirs[oneof]), f"{name}.{oneof}: {members} vs {theirs[oneof]}"
        for field in message["fields"]:
            their_oneof = next((o for o, m in theirs.items() if field in m), None)
            our_oneof = next((o for o, m in message["oneofs"].items() if field in m), None)
            assert our_oneof == their_oneof, f"{name}.{field}: oneof {our_oneof} != Triton {their_oneof}"


def test_every_enum_value_we_define_matches_triton(ours: dict[str, Any], triton: dict[str, Any]) -> None:
    for name, values in ours["enums"].items():
        assert name in triton["enums"], f"{name}: not a Triton enum"
        for value, number in values.items():
            assert triton["enums"][name].get(value) == number, f"{name}.{value} = {number}"


def test_service_has_every_triton_method_in_order(ours: dict[str, Any], triton: dict[str, Any]) -> None:
    expected = _expected_methods()
    assert list(ours["services"]) == [SERVICE]
    assert ours["services"][SERVICE] == expected
    assert ours["services"][SERVICE] == triton["services"][SERVICE]


def test_service_messages_cover_triton_completely(ours: dict[str, Any], triton: dict[str, Any]) -> None:
    # Everything in Triton's grpc_service.proto (requests, responses, statistics, ...) is ours too.
    missing = [
        f"{name}.{field}"
        for name, message in triton["messages"].items()
        if message["file"] == "grpc_service.proto"
        for field in message["fields"]
        if field not in ours["messages"].get(name, {}).get("fields", {})
    ]
    missing += [
        name
        for name, message in triton["messages"].items()
        if message["file"] == "grpc_service.proto" and name not in ours["messages"]
    ]
    assert not missing, f"missing from protos/inference.proto: {missing}"


def test_model_config_has_the_fields_the_gateway_uses(ours: dict[str, Any]) -> None:
    fields = ours["messages"]["inference.ModelConfig"]["fields"]
    assert [f for f in REQUIRED_MODEL_CONFIG_FIELDS if f not in fields] == []
    assert "dynamic_batching" in ours["messages"]["inference.ModelConfig"]["oneofs"]["scheduling_choice"]
    for enum in ("inference.DataType", "inference.ModelInput.Format", "inference.ModelInstanceGroup.Kind"):
        assert enum in ours["enums"]
    assert "inference.ModelQueuePolicy.TimeoutAction" in ours["enums"]


@pytest.fixture(scope="module")
def round_trip() -> tuple[dict[str, Any], dict[str, Any]]:
    built = _run(BUILD_WITH_OURS)
    parsed = _run(PARSE_WITH_TRITON, stdin=json.dumps({k: {"hex": v["hex"]} for k, v in built.items()}))
    return built, parsed


def test_our_messages_parse_identically_in_tritonclient(
    round_trip: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    built, parsed = round_trip
    assert {"ModelInferRequest", "ModelInferResponse", "ModelConfigResponse"} <= set(built)
    for key, sample in built.items():
        assert sample["dict"], f"{key}: sample is empty"
        assert parsed[key]["dict"] == sample["dict"], key
        # Same bytes back out: nothing was dropped or kept as an unknown field.
        assert parsed[key]["deterministic"] == sample["deterministic"], key


def test_tritonclient_decodes_our_infer_response(round_trip: tuple[dict[str, Any], dict[str, Any]]) -> None:
    decoded = round_trip[1]["_decoded"]
    assert decoded["probs_shape"] == [2, 3]
    assert decoded["probs"] == [0.1, 0.2, 0.7, 0.5, 0.25, 0.25]
    assert decoded["is_float32"]
    assert decoded["label"] == ["setosa", "virginica"]
    assert decoded["empty_shape"] == [0]
    assert decoded["model_version"] == "3"
    assert decoded["final"] is True


def test_tritonclient_reads_our_model_config(round_trip: tuple[dict[str, Any], dict[str, Any]]) -> None:
    decoded = round_trip[1]["_decoded"]
    assert decoded["config_version_policy"] == "specific"
    assert decoded["config_scheduling"] == "dynamic_batching"
    assert decoded["config_input_type"] == "TYPE_FP32"
    assert decoded["config_output_type"] == "TYPE_BF16"
    assert decoded["config_queue_action"] == "DELAY"
    assert decoded["config_json_name"] == "iris"


def test_we_parse_the_request_tritonclient_builds() -> None:
    request = _run(BUILD_WITH_TRITONCLIENT)
    seen = _run(PARSE_WITH_OURS, stdin=json.dumps(request))
    assert seen["model_name"] == "iris"
    assert seen["model_version"] == "2"
    assert seen["id"] == "abc"
    assert seen["parameters"] == {
        "flag": ["bool_param", True],
        "n": ["int64_param", 3],
        "priority": ["uint64_param", 1],
        "ratio": ["double_param", 0.5],
        "sequence_end": ["bool_param", False],
        "sequence_id": ["int64_param", 7],
        "sequence_start": ["bool_param", True],
        "tag": ["string_param", "canary"],
        "timeout": ["int64_param", 1000],
    }
    assert seen["inputs"] == [["x", "FP32", [2, 3], False], ["s", "BYTES", [2], False]]
    assert seen["outputs"] == [["y", {"classification": ["int64_param", 2]}], ["z", {}]]
    assert seen["raw_count"] == 2
    assert seen["x"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert seen["s"] == [b"hello".hex(), b"w\x00rld".hex()]
