"""config.pbtxt -> ModelSettings: every field Turnout reads, the ones it names as not acted on, bad values refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from google.protobuf import descriptor as protobuf_descriptor
from tritonclient.grpc import model_config_pb2 as triton_schema

from gateway.registry.model_settings import SettingsInvalid
from gateway.registry.repository import ModelRepository
from gateway.registry.triton_config import parse_config
from gateway.wire.turnout.triton import model_config_pb2 as our_schema
from tests.support.model_repository import EXAMPLES, config_pbtxt_for

ONNX = 'platform: "onnxruntime_onnx"\n'


def _fields(message: protobuf_descriptor.Descriptor, prefix: str = "") -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for field in message.fields:
        found[prefix + field.name] = (field.number, field.type)
        if field.message_type is not None:
            found.update(_fields(field.message_type, f"{prefix}{field.name}."))
    return found


def test_the_schema_has_tritons_fields_and_numbers() -> None:
    assert _fields(our_schema.ModelConfig.DESCRIPTOR) == _fields(triton_schema.ModelConfig.DESCRIPTOR)
    assert our_schema.ModelConfig.DESCRIPTOR.full_name == "turnout.triton.ModelConfig"


def test_a_minimal_config_gives_the_defaults_triton_would() -> None:
    settings = parse_config(ONNX, "m").settings
    assert settings.source == "config.pbtxt"
    assert settings.runtime == "onnxruntime"
    assert settings.max_batch_size == 0
    assert settings.model_filename == "model.onnx"
    assert settings.instance_count == 1
    assert settings.version_policy.kind == "latest"
    # Without dynamic_batching Triton does not wait for other requests: no queue delay.
    assert settings.dynamic_batching.max_queue_delay_microseconds == 0
    assert settings.inputs is None and settings.outputs is None
    assert parse_config(ONNX, "m").not_acted_on == ()


def test_backend_onnxruntime_and_neither_platform_nor_backend_are_served() -> None:
    assert parse_config('backend: "onnxruntime"', "m").settings.runtime == "onnxruntime"
    assert parse_config("max_batch_size: 4", "m").settings.max_batch_size == 4


def test_every_field_turnout_reads() -> None:
    text = ONNX + """
    name: "m"
    max_batch_size: 16
    default_model_filename: "net.onnx"
    version_policy: { specific: { versions: [ 1, 3 ] } }
    instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_AUTO } ]
    dynamic_batching {
      max_queue_delay_microseconds: 500
      preferred_batch_size: [ 4, 8 ]
      default_queue_policy { max_queue_size: 10 default_timeout_microseconds: 7000 }
    }
    input [ { name: "a" data_type: TYPE_FP32 dims: [ 2, 4 ] reshape: { shape: [ 8 ] } } ]
    output [ { name: "b" data_type: TYPE_STRING dims: [ -1 ] }, { name: "c" data_type: TYPE_INT64 dims: [ 1 ] } ]
    """
    settings = parse_config(text, "m").settings
    assert settings.max_batch_size == 16
    assert settings.model_filename == "net.onnx"
    assert settings.version_policy.select({1, 2, 3}) == {1, 3}
    assert settings.instance_count == 3
    batching = settings.dynamic_batching
    assert batching.max_queue_delay_microseconds == 500
    assert batching.preferred_batch_sizes == (4, 8)
    assert batching.max_queue_size == 10
    assert batching.default_queue_timeout_microseconds == 7000
    assert settings.inputs is not None and settings.outputs is not None
    assert [(t.name, t.datatype, t.dims, t.reshape) for t in settings.inputs] == [("a", "FP32", (2, 4), (8,))]
    assert [(t.name, t.datatype, t.dims) for t in settings.outputs] == [("b", "BYTES", (-1,)), ("c", "INT64", (1,))]
    assert parse_config(text, "m").not_acted_on == ()


@pytest.mark.parametrize(
    ("config_type", "datatype"),
    [
        ("TYPE_BOOL", "BOOL"),
        ("TYPE_UINT8", "UINT8"),
        ("TYPE_UINT16", "UINT16"),
        ("TYPE_UINT32", "UINT32"),
        ("TYPE_UINT64", "UINT64"),
        ("TYPE_INT8", "INT8"),
        ("TYPE_INT16", "INT16"),
        ("TYPE_INT32", "INT32"),
        ("TYPE_INT64", "INT64"),
        ("TYPE_FP16", "FP16"),
        ("TYPE_FP32", "FP32"),
        ("TYPE_FP64", "FP64"),
        ("TYPE_STRING", "BYTES"),
    ],
)
def test_datatypes(config_type: str, datatype: str) -> None:
    settings = parse_config(ONNX + f'input [ {{ name: "t" data_type: {config_type} dims: [ 3 ] }} ]', "m").settings
    assert settings.inputs is not None and settings.inputs[0].datatype == datatype


@pytest.mark.parametrize(
    ("policy", "available", "served"),
    [
        ("latest: { num_versions: 2 }", {1, 2, 3}, {2, 3}),
        ("all: {}", {1, 2, 3}, {1, 2, 3}),
        ("specific: { versions: [ 2 ] }", {1, 2, 3}, {2}),
    ],
)
def test_version_policies(policy: str, available: set[int], served: set[int]) -> None:
    settings = parse_config(ONNX + f"version_policy: {{ {policy} }}", "m").settings
    assert settings.version_policy.select(available) == served


def test_instance_groups_add_up_and_kinds_other_than_cpu_are_named() -> None:
    parsed = parse_config(ONNX + "instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0 ] }, { count: 3 } ]", "m")
    assert parsed.settings.instance_count == 5
    assert parsed.not_acted_on == ("instance_group.gpus", "instance_group kind KIND_GPU (runs on CPU)")


def test_fields_turnout_does_not_act_on_are_named_once_each() -> None:
    text = ONNX + """
    max_batch_size: 8
    input [ { name: "a" data_type: TYPE_FP32 dims: [ 3 ] format: FORMAT_NCHW } ]
    input [ { name: "b" data_type: TYPE_FP32 dims: [ 3 ] format: FORMAT_NHWC allow_ragged_batch: true } ]
    output [ { name: "c" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
    dynamic_batching {
      preserve_ordering: true
      default_queue_policy { timeout_action: DELAY allow_timeout_override: true max_queue_size: 4 }
    }
    optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
    model_warmup [ { name: "w" batch_size: 1 } ]
    parameters { key: "k" value: { string_value: "v" } }
    response_cache { enable: true }
    model_transaction_policy { decoupled: true }
    """
    assert parse_config(text, "m").not_acted_on == (
        "input.format",
        "input.allow_ragged_batch",
        "output.label_filename",
        "dynamic_batching.preserve_ordering",
        "dynamic_batching.default_queue_policy.timeout_action",
        "dynamic_batching.default_queue_policy.allow_timeout_override",
        "optimization",
        "parameters",
        "model_warmup",
        "model_transaction_policy",
        "response_cache",
    )


def test_an_unbounded_queue_keeps_turnouts_bound_and_says_so() -> None:
    parsed = parse_config(ONNX + "max_batch_size: 8 dynamic_batching { }", "m")
    assert parsed.settings.dynamic_batching.max_queue_size == 1024
    assert parsed.not_acted_on == (
        "dynamic_batching.default_queue_policy.max_queue_size 0 (unbounded; Turnout keeps 1024)",
    )


def test_sequence_batching_parses_and_is_named() -> None:
    sequence = parse_config(ONNX + "sequence_batching { max_sequence_idle_microseconds: 5000 }", "m")
    assert sequence.not_acted_on == ("sequence_batching",)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan' is not served by Turnout"),
        ('platform: "ensemble" ensemble_scheduling { step [ { model_name: "a" } ] }', "platform 'ensemble'"),
        ('backend: "python"', "backend 'python' is not served by Turnout"),
        ('backend: "pytorch"', "backend 'pytorch'"),
        ('platform: "onnxruntime_onnx" backend: "tensorrt"', "backend 'tensorrt'"),
        ('name: "other"', "name 'other' does not match the model directory 'm'"),
        ("max_batch_size: -1", "max_batch_size must be 0 (no batch dimension) or more, got -1"),
        ("instance_group [ { count: -2 } ]", "instance_group count must not be negative"),
        ("instance_group [ { count: 40 }, { count: 40 } ]", "instance_group counts add up to 80"),
        ("version_policy: { latest: { num_versions: 0 } }", "num_versions must be at least 1"),
        ("version_policy: { specific: { } }", "specific names no versions"),
        ("max_batch_size: 4 dynamic_batching { preferred_batch_size: [ 8 ] }", "preferred_batch_size [8]"),
        ('input [ { name: "a" data_type: TYPE_BF16 dims: [ 1 ] } ]', "input 'a': data_type TYPE_BF16"),
        ('output [ { name: "b" dims: [ 1 ] } ]', "output 'b': data_type TYPE_INVALID"),
        ('input [ { name: "a" data_type: TYPE_FP32 dims: [ -2 ] } ]', "input 'a': dims [-2]"),
        (
            'input [ { name: "a" data_type: TYPE_FP32 dims: [ 3 ] reshape: { shape: [ 4 ] } } ]',
            "input 'a': reshape [4] holds 4 elements but dims [3] hold 3",
        ),
        (
            'input [ { name: "a" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ -1, -1 ] } } ]',
            "input 'a': reshape [-1, -1]",
        ),
        ('default_model_filename: "../escape.onnx"', "model_filename"),
        ("max_batch_size: 8\ninput [ { name: \"a\" dimz: [ 1 ] } ]", 'line 2:21 : Message type "turnout.triton.'),
        ("max_batch_size: eight", "line 1:17"),
    ],
)
def test_bad_values_are_refused_naming_the_field(text: str, fragment: str) -> None:
    with pytest.raises(SettingsInvalid) as raised:
        parse_config(text, "m")
    assert str(raised.value).startswith("config.pbtxt: ")
    assert fragment in str(raised.value)


def test_the_config_written_for_the_examples_model_yaml_reads_back_as_the_same_settings() -> None:
    yaml_text = (EXAMPLES / "digits" / "model.yaml").read_text()
    settings = parse_config(config_pbtxt_for(yaml_text, "digits"), "digits").settings
    assert settings.max_batch_size == 64 and settings.version_policy.kind == "all"
    assert settings.inputs is not None and settings.inputs[0].dims == (64,)


# --- the repository: which file, read how often ---------------------------------------------------


def model_dir(root: Path, name: str = "m") -> Path:
    directory = root / name / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"")
    return root / name


def test_the_repository_reads_config_pbtxt_and_logs_its_notes_once_per_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = model_dir(tmp_path)
    (directory / "config.pbtxt").write_text(ONNX + "max_batch_size: 4 optimization { priority: PRIORITY_MAX }")
    repository = ModelRepository(tmp_path)
    with caplog.at_level(logging.INFO, logger="gateway.registry.repository"):
        for _ in range(3):
            entry = repository.scan_model("m")
            assert entry is not None and entry.settings is not None and entry.settings.max_batch_size == 4
        notes = [r.getMessage() for r in caplog.records if "does not act on" in r.getMessage()]
        assert notes == ["model 'm': config.pbtxt fields Turnout does not act on: optimization"]
        (directory / "config.pbtxt").write_text(ONNX + "max_batch_size: 8 model_warmup [ { name: \"w\" } ]")
        entry = repository.scan_model("m")
        assert entry is not None and entry.settings is not None and entry.settings.max_batch_size == 8
        notes = [r.getMessage() for r in caplog.records if "does not act on" in r.getMessage()]
        assert len(notes) == 2 and notes[1].endswith("model_warmup")


def test_a_config_pbtxt_that_fails_is_reported_as_the_models_settings_error(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    (directory / "config.pbtxt").write_text('platform: "pytorch_libtorch"')
    repository = ModelRepository(tmp_path)
    for _ in range(2):  # the second answer comes from what was read the first time
        entry = repository.scan_model("m")
        assert entry is not None and entry.settings is None
        assert entry.settings_error is not None and "platform 'pytorch_libtorch'" in entry.settings_error
        assert 1 in entry.versions


def test_model_yaml_wins_over_config_pbtxt_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = model_dir(tmp_path)
    (directory / "config.pbtxt").write_text('platform: "tensorrt_plan"')
    (directory / "model.yaml").write_text("max_batch_size: 2\n")
    repository = ModelRepository(tmp_path)
    with caplog.at_level(logging.WARNING, logger="gateway.registry.repository"):
        for _ in range(3):
            entry = repository.scan_model("m")
            assert entry is not None and entry.settings is not None
            assert entry.settings.max_batch_size == 2 and entry.settings.source == "model.yaml"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "model.yaml" in warnings[0] and "config.pbtxt" in warnings[0] and "serving with model.yaml" in warnings[0]


def test_default_model_filename_picks_the_artifact(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    (directory / "1" / "net.onnx").write_bytes(b"")
    (directory / "config.pbtxt").write_text(ONNX + 'default_model_filename: "net.onnx"')
    entry = ModelRepository(tmp_path).scan_model("m")
    assert entry is not None and entry.versions[1].artifact == directory / "1" / "net.onnx"
    (directory / "config.pbtxt").write_text(ONNX + 'default_model_filename: "missing.onnx"')
    entry = ModelRepository(tmp_path).scan_model("m")
    assert entry is not None and entry.versions[1].artifact is None


def test_model_yaml_may_not_claim_to_be_another_file(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    (directory / "model.yaml").write_text("source: config.pbtxt\n")
    entry = ModelRepository(tmp_path).scan_model("m")
    assert entry is not None and entry.settings_error is not None and "source" in entry.settings_error
