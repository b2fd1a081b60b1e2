"""The inference request and response as the use cases see them, free of any wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.serving.tensors import Tensor


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str
    id: str
    inputs: list[Tensor]
    output_names: list[str] = field(default_factory=list)  # empty: every output
    parameters: dict[str, Any] = field(default_factory=dict)
    # Text request metadata (gRPC headers) that routing reads: the pin header and the sticky key.
    routing_metadata: dict[str, str] = field(default_factory=dict)
    via_stream: bool = False  # came on a ModelStreamInfer stream, not as a unary ModelInfer
    # Some input still has its element-by-element work to do (gateway.serving.tensors): done once the
    # model's checks pass, so that a request the model refuses costs no conversion.
    unfinished: bool = False


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    arm: str = "stable"  # stable, canary or pinned
    generation: int = 0  # the policy generation that routed it; 0 before any policy is set
