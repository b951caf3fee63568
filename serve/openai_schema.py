"""The OpenAI-compatible request bodies the server accepts, and the error shape it answers with.

Requests are validated here, before they reach the model: a field out of range or an argument we do not implement
is a 400 with OpenAI's error object, naming the offending parameter. Fields OpenAI defines but we cannot honour
(several choices, log-probabilities, tools, echo) are refused rather than silently ignored; `top_k` and
`repetition_penalty` are accepted as extensions (the openai client sends them with `extra_body`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_STRINGS = 4  # as OpenAI
UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}  # pydantic's names of union members in a location


class APIError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


class StrictModel(BaseModel):
    # An argument we do not know is refused (OpenAI answers "Unrecognized request argument supplied").
    model_config = ConfigDict(extra="forbid")


class StreamOptions(StrictModel):
    include_usage: bool = False


class GenerationFields(StrictModel):
    """What completions and chat completions share: the model, sampling, stopping and streaming."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # metadata: accepted and ignored, as it does not change the output
    # Extensions, sent by the openai client through `extra_body`.
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported (one choice per request)")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(stop == "" for stop in stops):
            raise ValueError("stop strings must not be empty")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_openai_penalties(cls, value: float | None) -> float | None:
        if value not in (None, 0):
            raise ValueError("not supported; use the repetition_penalty extension")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("not supported")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> GenerationFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(GenerationFields):
    """`POST /v1/completions`: one prompt (a string, a one-string list, or token ids) continued."""

    prompt: str | list[str] | list[int]
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list) and (not value or isinstance(value[0], str)) and len(value) != 1:
            raise ValueError("exactly one prompt per request (batched prompts are not supported)")
        return value

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        for name, neutral in (("echo", (None, False)), ("suffix", (None,)), ("logprobs", (None,)), ("best_of", (None, 1))):
            if getattr(self, name) not in neutral:
                raise ValueError(f"{name} is not supported")
        return self


class ChatMessage(BaseModel):
    # Clients echo assistant messages back with extra keys (refusal, annotations): ignore those.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        for part in value if isinstance(value, list) else []:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported, got type {part.get('type')!r}")
        return value

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part["text"] for part in self.content)
        return self.content or ""

    @property
    def template_role(self) -> str:
        return "system" if self.role == "developer" else self.role


class ChatCompletionRequest(GenerationFields):
    """`POST /v1/chat/completions`: the conversation is rendered by the chat template and continued."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> ChatCompletionRequest:
        if self.logprobs or self.top_logprobs is not None:
            raise ValueError("logprobs are not supported")
        if self.response_format not in (None, {"type": "text"}):
            raise ValueError("only response_format {'type': 'text'} is supported")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """FastAPI's validation errors (a 422 by default) as one OpenAI-style 400 naming the first bad parameter."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return invalid("the request body is not valid JSON", code="invalid_json")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    # Union members appear in the location (`str`, `list[str]`, `function-after[...]`); keep the field path.
    location = [part for part in location if (part.isidentifier() or part.isdigit()) and part not in UNION_TAGS]
    param = ".".join(location) or None
    if first.get("type") == "extra_forbidden":
        return invalid(f"Unrecognized request argument supplied: {param}", param=param, code="unrecognized_argument")
    if first.get("type") == "missing":
        return invalid(f"missing required parameter: {param}", param=param, code="missing_required_parameter")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return invalid(f"{param}: {message}" if param else message, param=param, code="invalid_value")
