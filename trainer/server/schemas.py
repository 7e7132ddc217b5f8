"""Request and response bodies, shaped like TensorFlow Serving's REST API where it has one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator


class PredictRequest(BaseModel):
    """Row format (`instances`) or columnar format (`inputs`), never both."""

    signature_name: str | None = Field(None, description="only `serving_default` exists")
    instances: list[Any] | None = Field(
        None, description="row format: one tensor (or `{input: tensor}` object) per instance"
    )
    inputs: Any = Field(None, description="columnar format: the batch tensor, or `{input: tensor}`")

    @model_validator(mode="after")
    def _one_format(self) -> PredictRequest:
        if (self.instances is None) == (self.inputs is None):
            raise ValueError("a predict request has exactly one of 'instances' or 'inputs'")
        return self


class PredictResponse(BaseModel):
    predictions: list[list[float]]


class ColumnarPredictResponse(BaseModel):
    outputs: list[list[float]]


class ErrorResponse(BaseModel):
    error: str


class Status(BaseModel):
    error_code: str = "OK"
    error_message: str = ""


class ModelVersionStatus(BaseModel):
    version: str
    state: Literal["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]
    status: Status = Status()


class ModelStatusResponse(BaseModel):
    model_version_status: list[ModelVersionStatus]


class ModelSpec(BaseModel):
    name: str
    signature_name: str = ""
    version: str


class Dim(BaseModel):
    size: str
    name: str = ""


class TensorShape(BaseModel):
    dim: list[Dim]
    unknown_rank: bool = False


class TensorInfo(BaseModel):
    dtype: str
    tensor_shape: TensorShape
    name: str


class SignatureDef(BaseModel):
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    method_name: str = "tensorflow/serving/predict"


class SignatureDefMap(BaseModel):
    signature_def: dict[str, SignatureDef]


class Metadata(BaseModel):
    signature_def: SignatureDefMap


class ExportInfo(BaseModel):
    """What the trainer recorded about this export (its `metadata.json`)."""

    class_names: list[str] = Field(serialization_alias="classNames")
    input_shape: list[int] = Field(serialization_alias="inputShape")
    metrics: dict[str, float] = {}
    metric: str | None = None
    details: dict[str, Any] = Field(
        {}, description="the rest of metadata.json: epoch, jobName, dataset, architecture, ..."
    )


class ModelMetadataResponse(BaseModel):
    model_spec: ModelSpec
    metadata: Metadata
    export: ExportInfo


class ClassifyResponse(BaseModel):
    model_spec: ModelSpec
    label: str = Field(description="the most probable class name")
    class_index: int
    probabilities: dict[str, float] = Field(description="class name -> probability")


class Health(BaseModel):
    status: str


# The Open Inference Protocol (KServe v2): documented here, checked by `open_inference.py`.


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="FP32, UINT8, INT64, ...: any numeric type")
    data: list[Any] = Field(description="the values in row-major order, flat or nested")
    parameters: dict[str, Any] = {}


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = {}


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = {}
    inputs: list[InferTensor] = Field(description="exactly one: the model's input")
    outputs: list[RequestedOutput] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataV2(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadataV2(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class ModelReadiness(BaseModel):
    name: str
    ready: bool
