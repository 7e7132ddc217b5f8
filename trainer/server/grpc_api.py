"""TensorFlow Serving's gRPC API for the one served model, on its own port (8500 by default).

`PredictionService.Predict` and `GetModelMetadata` and `ModelService.GetModelStatus`, with the
messages of PyPI's `tensorflow-serving-api`, so TF Serving's own gRPC clients work unchanged.
Predictions go through the same validation and the same batcher as the REST routes. The
service starts once the model is loaded (the protos import TensorFlow, which the loader
imports first), as TF Serving opens its ports once its models are loaded; errors are the
REST API's messages with the matching gRPC status codes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import numpy as np
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from ..api.layout import SIGNATURE_NAME
from .errors import BadRequest, NotFound, ServingError
from .inputs import to_batch
from .model import ServedModel, SignatureTensor
from .protocol import check_served, check_signature, served
from .state import ServerState

log = logging.getLogger(__name__)

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
NUMPY_TYPES = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT8: (np.int8, "int_val"),
    types_pb2.DT_INT16: (np.int16, "int_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_UINT16: (np.uint16, "int_val"),
}
"""Input tensor types taken: numpy's type and the repeated field holding values otherwise."""
PREDICT_METHOD = "tensorflow/serving/predict"

Reply = TypeVar("Reply")


def _version(spec: model_pb2.ModelSpec) -> str | None:
    if spec.version_label:
        raise NotFound(f"version label {spec.version_label!r} is not defined; use a version")
    return str(spec.version.value) if spec.HasField("version") else None


def _model_spec(model: ServedModel) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=model.name, signature_name=SIGNATURE_NAME)
    spec.version.value = model.version
    return spec


def tensor_to_array(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """A request's TensorProto as an array, from `tensor_content` or the typed value field."""
    if tensor.dtype not in NUMPY_TYPES:
        raise BadRequest(
            f"input dtype {types_pb2.DataType.Name(tensor.dtype)} is not numeric; "
            "this model takes pixel values"
        )
    dtype, field = NUMPY_TYPES[tensor.dtype]
    shape = [d.size for d in tensor.tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise BadRequest(f"input shape {shape} has unknown dimensions")
    size = math.prod(shape)
    if tensor.tensor_content:
        if len(tensor.tensor_content) != size * np.dtype(dtype).itemsize:
            raise BadRequest(f"tensor_content does not hold {size} values for shape {shape}")
        values = np.frombuffer(tensor.tensor_content, dtype=np.dtype(dtype).newbyteorder("<"))
    else:
        values = np.asarray(getattr(tensor, field), dtype=dtype)
        if len(values) == 1 and size > 1:  # TensorFlow's shorthand: one value fills the shape
            values = np.full(size, values[0], dtype=dtype)
        if len(values) != size:
            raise BadRequest(f"{len(values)} values given for shape {shape}")
    return values.reshape(shape)


def array_to_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape]
    )
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=shape,
        tensor_content=np.ascontiguousarray(array, dtype="<f4").tobytes(),
    )


def _tensor_info(tensor: SignatureTensor) -> meta_graph_pb2.TensorInfo:
    dims = [
        tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else d) for d in tensor.shape
    ]
    return meta_graph_pb2.TensorInfo(
        name=f"{SIGNATURE_NAME}_{tensor.name}:0",
        dtype=types_pb2.DataType.Value(tensor.dtype),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims),
    )


class Services(
    prediction_service_pb2_grpc.PredictionServiceServicer,
    model_service_pb2_grpc.ModelServiceServicer,
):
    """Both services' methods over the server's state; the rest answer UNIMPLEMENTED."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def _answer(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        """`work()`'s reply, or its `ServingError` as the matching status; counted in metrics."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await work()
        except ServingError as error:
            code = STATUS_CODES.get(error.status_code, grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(code, error.message)  # raises, ending the call
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            self.state.metrics.observe_request(
                method, "GRPC", code.name, time.perf_counter() - start
            )

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        async def work() -> predict_pb2.PredictResponse:
            spec = request.model_spec
            model = served(self.state, spec.name, _version(spec))
            check_signature(spec.signature_name)
            if set(request.inputs) != {model.input.name}:
                raise BadRequest(
                    f"inputs {sorted(request.inputs)} given; this model's only input is "
                    f"{model.input.name!r}"
                )
            unknown = set(request.output_filter) - {model.output.name}
            if unknown:
                raise BadRequest(
                    f"output_filter names {sorted(unknown)}; the only output is "
                    f"{model.output.name!r}"
                )
            values = tensor_to_array(request.inputs[model.input.name])
            batch = to_batch(values, model.input_shape, self.state.settings.max_batch_size)
            assert self.state.batcher is not None
            rows = await self.state.batcher.predict(batch)
            return predict_pb2.PredictResponse(
                model_spec=_model_spec(model), outputs={model.output.name: array_to_tensor(rows)}
            )

        return await self._answer("/tensorflow.serving.PredictionService/Predict", context, work)

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        async def work() -> get_model_metadata_pb2.GetModelMetadataResponse:
            spec = request.model_spec
            model = served(self.state, spec.name, _version(spec))
            fields = set(request.metadata_field)
            if fields != {"signature_def"}:
                raise BadRequest(
                    f"metadata_field {sorted(fields)}: the only metadata is 'signature_def'"
                )
            signature = meta_graph_pb2.SignatureDef(
                inputs={model.input.name: _tensor_info(model.input)},
                outputs={model.output.name: _tensor_info(model.output)},
                method_name=PREDICT_METHOD,
            )
            packed = any_pb2.Any()
            packed.Pack(
                get_model_metadata_pb2.SignatureDefMap(signature_def={SIGNATURE_NAME: signature})
            )
            return get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=_model_spec(model), metadata={"signature_def": packed}
            )

        return await self._answer(
            "/tensorflow.serving.PredictionService/GetModelMetadata", context, work
        )

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context
    ) -> get_model_status_pb2.GetModelStatusResponse:
        async def work() -> get_model_status_pb2.GetModelStatusResponse:
            state = self.state
            check_served(state, request.model_spec.name, _version(request.model_spec))
            status = get_model_status_pb2.ModelVersionStatus(
                version=state.version,
                state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
                if state.warmed
                else get_model_status_pb2.ModelVersionStatus.LOADING,
            )
            return get_model_status_pb2.GetModelStatusResponse(model_version_status=[status])

        return await self._answer("/tensorflow.serving.ModelService/GetModelStatus", context, work)


async def start_grpc(state: ServerState) -> grpc.aio.Server:
    """Listen on `--grpc-port` on the same event loop as the REST API; raises if it cannot."""
    settings = state.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.so_reuseport", 0),  # a port already taken is an error, not a shared port
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_requests,
    )
    services = Services(state)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(services, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(services, server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    if server.add_insecure_port(f"{host}:{settings.grpc_port}") == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{settings.grpc_port}")
    await server.start()
    log.info("gRPC (TensorFlow Serving's API) on %s:%d", host, settings.grpc_port)
    return server
