"""Request bodies of the OpenAI-compatible API (pydantic), with steerlens' extra fields
``steering`` and ``monitors`` (OpenAI clients send them through ``extra_body``)."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = Union[StrictInt, StrictFloat]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InlineVector(_Body):
    """``{"layers": {"6": [640 floats] | "<base64 float32 LE>"}, "hook": "resid_post"}``"""

    layers: dict[str, Any]
    hook: Literal["resid_post", "resid_pre", "attn_out", "mlp_out"] = "resid_post"


class SteeringSpec(_Body):
    vector: Union[StrictStr, InlineVector]
    coeff: Number | None = Field(default=None, allow_inf_nan=False)
    layers: list[StrictInt] | StrictInt | None = None
    op: Literal["add", "ablate", "clamp", "add_norm"] = "add"
    positions: Literal["all", "prompt", "generated"] = "all"


class _Generation(_Body):
    model: StrictStr
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: Number = Field(default=1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: Number = Field(default=1.0, gt=0, le=1, allow_inf_nan=False)
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**63)
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    user: StrictStr | None = None
    presence_penalty: Number = 0
    frequency_penalty: Number = 0
    logit_bias: dict[str, Any] | None = None
    steering: list[SteeringSpec] = Field(default_factory=list, max_length=16)
    monitors: list[StrictStr] = Field(default_factory=list, max_length=16)
    timeout: Number | None = Field(default=None, gt=0, allow_inf_nan=False)


class CompletionRequest(_Generation):
    prompt: StrictStr | list[StrictStr] | list[StrictInt]
    logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    echo: StrictBool = False
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: StrictStr | list[dict[str, Any]]


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=5)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)


class VectorUpload(_Body):
    """``file``: a base64 steerlens vector file; or ``layers`` (inline, see ``InlineVector``)."""

    name: StrictStr
    file: StrictStr | None = None
    layers: dict[str, Any] | None = None
    hook: Literal["resid_post", "resid_pre", "attn_out", "mlp_out"] = "resid_post"
    coeff: Number | None = Field(default=None, allow_inf_nan=False)
    replace: StrictBool = False


class ProbeUpload(_Body):
    """``file``: a base64 probe file (``probes.save_probe``)."""

    name: StrictStr
    file: StrictStr
    replace: StrictBool = False
