"""Triton's model-repository calls (``RepositoryIndex``, ``RepositoryModelLoad``/``Unload``), served on
both listeners: the inference port, where tritonclient's ``load_model``/``unload_model`` call them, and
the control address. A load or unload passes the control gate of the listener it came to."""

from __future__ import annotations

from typing import Any

import grpc

from gateway.edge.codec import index_to_proto
from gateway.edge.control_gate import ControlGate
from gateway.edge.status import maps_errors
from gateway.errors import InvalidArgument
from gateway.rollouts.repository_control import RepositoryControl
from gateway.serving.model_views import ModelViews
from gateway.wire import inference_pb2 as pb

# What the control listener serves of inference.GRPCInferenceService.
REPOSITORY_METHODS = ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")


class RepositoryServicer:
    def __init__(self, models: ModelViews, repository: RepositoryControl, gate: ControlGate) -> None:
        self._models = models
        self._repository = repository
        self._gate = gate

    @maps_errors
    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        return index_to_proto(self._models.index(ready_only=request.ready))

    @maps_errors
    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> Any:
        actor = self._gate.admit(context, "RepositoryModelLoad", request.model_name, request)
        overrides = [key for key in request.parameters if key == "config" or key.startswith("file:")]
        if overrides:
            raise InvalidArgument(
                f"load parameters {overrides} are not supported: Turnout loads what the repository holds; "
                "change model.yaml or the version directories instead"
            )
        self._repository.load(request.model_name, actor)
        return pb.RepositoryModelLoadResponse()

    @maps_errors
    def RepositoryModelUnload(self, request: Any, context: grpc.ServicerContext) -> Any:
        actor = self._gate.admit(context, "RepositoryModelUnload", request.model_name, request)
        self._repository.unload(request.model_name, actor)
        return pb.RepositoryModelUnloadResponse()
