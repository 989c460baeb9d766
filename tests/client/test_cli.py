"""`autoglm-client` argument handling, output and exit codes, with a stand-in for `Client`
(the real client is exercised against the real server by the integration tests)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import grpc
import pytest

from autoglm.client import (
    ClientConfig,
    Completion,
    Delta,
    InternalError,
    InvalidArgumentError,
    ModelInfo,
    ResourceExhaustedError,
    TokenCount,
    cli,
)
from tests.client.conftest import TOKEN


class StandInClient:
    """Records calls; `stream` and `error` script what the next call does."""

    instances: ClassVar[list[StandInClient]] = []

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.stream: list[Delta | BaseException] = []
        self.stream_closed = False
        self.error: BaseException | None = None
        self.completion = Completion("r1", "smollm2", " Paris.", (1, 2), "stop", 6, 2)
        self.models = [ModelInfo("smollm2", "cpu_reference", 2048, 512, 128, True)]
        self.closed = False
        StandInClient.instances.append(self)
        StandInClient.setup(self)

    @staticmethod
    def setup(client: StandInClient) -> None:
        """Replaced per test to script the client."""

    def __enter__(self) -> StandInClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        if self.error is not None:
            raise self.error

    def generate(self, *args: Any, **kwargs: Any) -> Completion:
        self._record("generate", *args, **kwargs)
        return self.completion

    def generate_stream(self, *args: Any, **kwargs: Any) -> Iterator[Delta]:
        self._record("generate_stream", *args, **kwargs)

        def deltas() -> Iterator[Delta]:
            try:
                for item in self.stream:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                self.stream_closed = True

        return deltas()

    def list_models(self) -> list[ModelInfo]:
        self._record("list_models")
        return self.models

    def count_tokens(self, *args: Any, **kwargs: Any) -> TokenCount:
        self._record("count_tokens", *args, **kwargs)
        return TokenCount("smollm2", 3, (1, 2, 3))


@pytest.fixture(autouse=True)
def stand_in(monkeypatch: pytest.MonkeyPatch) -> type[StandInClient]:
    StandInClient.instances = []
    monkeypatch.setattr(cli, "Client", StandInClient)
    monkeypatch.setenv("AUTOGLM_ENDPOINT", "localhost:50051")
    monkeypatch.setenv("AUTOGLM_TOKEN", TOKEN)
    return StandInClient


def _script(monkeypatch: pytest.MonkeyPatch, **attrs: Any) -> None:
    def setup(client: StandInClient) -> None:
        for name, value in attrs.items():
            setattr(client, name, value)

    monkeypatch.setattr(StandInClient, "setup", staticmethod(setup))


def _only_call() -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    (client,) = StandInClient.instances
    assert client.closed
    (call,) = client.calls
    return call


STREAM = [
    Delta("r1", " Par", (1,)),
    Delta("r1", "", (2,)),  # held back (e.g. half a UTF-8 character)
    Delta("r1", "is.", (3,), "stop", 6, 3),
]


def test_generate_streams_text_and_reports_usage_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _script(monkeypatch, stream=STREAM)
    assert cli.main(["generate", "The capital of France is", "--max-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert out == " Paris."  # exactly the generated text when stdout is not a terminal
    assert "finish_reason=stop" in err and "prompt_tokens=6" in err
    assert "completion_tokens=3" in err
    name, args, kwargs = _only_call()
    assert name == "generate_stream"
    assert args == ("The capital of France is",)
    assert kwargs["messages"] is None and kwargs["max_tokens"] == 8
    assert kwargs["temperature"] is None and kwargs["stop"] == []


def test_generate_options_are_passed_through(monkeypatch: pytest.MonkeyPatch) -> None:
    _script(monkeypatch, stream=STREAM)
    argv = [
        "generate", "Hi", "--model", "m", "--temperature", "0", "--top-p", "0.9", "--top-k", "40",
        "--seed", "7", "--stop", "\n", "--stop", "###", "--repetition-penalty", "1.1",
        "--frequency-penalty", "0.5", "--presence-penalty", "-1", "--logprobs",
        "--request-id", "req-1",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    _, _, kwargs = _only_call()
    assert kwargs == {
        "messages": None,
        "model": "m",
        "max_tokens": 0,
        "temperature": 0.0,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "stop": ["\n", "###"],
        "repetition_penalty": 1.1,
        "frequency_penalty": 0.5,
        "presence_penalty": -1.0,
        "logprobs": True,
        "request_id": "req-1",
    }


def test_chat_sends_one_user_message(monkeypatch: pytest.MonkeyPatch) -> None:
    _script(monkeypatch, stream=STREAM)
    assert cli.main(["generate", "Hi", "--chat"]) == 0
    _, args, kwargs = _only_call()
    assert args == (None,)
    assert kwargs["messages"] == [("user", "Hi")]


def test_system_implies_chat(monkeypatch: pytest.MonkeyPatch) -> None:
    _script(monkeypatch, stream=STREAM)
    assert cli.main(["generate", "Hi", "--system", "Be brief."]) == 0
    _, args, kwargs = _only_call()
    assert args == (None,)
    assert kwargs["messages"] == [("system", "Be brief."), ("user", "Hi")]


def test_no_stream_uses_generate(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["generate", "Hi", "--no-stream"]) == 0
    out, err = capsys.readouterr()
    assert out == " Paris." and "finish_reason=stop" in err
    assert _only_call()[0] == "generate"


def test_json_prints_the_whole_completion(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["generate", "Hi", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out) == {
        "request_id": "r1",
        "model": "smollm2",
        "text": " Paris.",
        "token_ids": [1, 2],
        "finish_reason": "stop",
        "prompt_tokens": 6,
        "completion_tokens": 2,
        "trace_id": "",  # the stand-in server does not trace
        "logprobs": [],  # not asked for (--logprobs)
        "model_version": None,  # nor say which model version answered
    }


# The version that answered (x-autoglm-model-version; a canary's while one runs).
ANSWERED_BY_V2 = Completion("r1", "smollm2", " Paris.", (1, 2), "stop", 6, 2, model_version=2)


def test_json_carries_the_model_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _script(monkeypatch, completion=ANSWERED_BY_V2)
    assert cli.main(["generate", "Hi", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out)["model_version"] == 2


def test_usage_line_shows_the_model_version_when_the_server_says(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _script(monkeypatch, completion=ANSWERED_BY_V2)
    assert cli.main(["generate", "Hi", "--no-stream"]) == 0
    _, err = capsys.readouterr()
    assert err == "[finish_reason=stop prompt_tokens=6 completion_tokens=2 model_version=2]\n"


def test_stream_usage_line_shows_the_last_deltas_model_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    last = Delta("r1", "is.", (3,), "stop", 6, 3, model_version=7)
    _script(monkeypatch, stream=[*STREAM[:-1], last])
    assert cli.main(["generate", "Hi"]) == 0
    out, err = capsys.readouterr()
    assert out == " Paris."
    assert err == "[finish_reason=stop prompt_tokens=6 completion_tokens=3 model_version=7]\n"


@pytest.mark.parametrize("argv", [["generate", "Hi"], ["generate", "Hi", "--no-stream"]])
def test_usage_line_unchanged_without_a_model_version(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _script(monkeypatch, stream=STREAM)
    assert cli.main(argv) == 0
    _, err = capsys.readouterr()
    completion_tokens = 2 if "--no-stream" in argv else 3
    assert err == f"[finish_reason=stop prompt_tokens=6 completion_tokens={completion_tokens}]\n"


def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[0].endswith("\tIMAGES\tADAPTERS")
    assert out.splitlines()[1] == "smollm2\tcpu_reference\t2048\t512\t128\tyes\t0\t-"
    assert cli.main(["models", "--json"]) == 0
    [model] = json.loads(capsys.readouterr().out)
    assert model["name"] == "smollm2" and model["adapters"] == []


ADAPTERS = tuple(f"tenant-{i:02d}" for i in range(30))
LORA_MODELS = [
    ModelInfo("smollm2", "cpu_reference", 2048, 512, 128, True, adapters=("tenant-a", "tenant-b")),
    ModelInfo("glm", "vllm", 8192, 1024, 256, True, 4, adapters=ADAPTERS),
]


def test_models_lists_adapters_in_table_and_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _script(monkeypatch, models=LORA_MODELS)
    assert cli.main(["models"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[-1] for row in rows[:2]] == ["ADAPTERS", "tenant-a,tenant-b"]
    assert rows[2][-1].split(",") == list(ADAPTERS)  # through a pipe: every adapter
    assert {len(row) for row in rows} == {8}
    assert cli.main(["models", "--json"]) == 0
    listed = {m["name"]: m["adapters"] for m in json.loads(capsys.readouterr().out)}
    assert listed == {"smollm2": ["tenant-a", "tenant-b"], "glm": list(ADAPTERS)}


def test_models_on_a_terminal_shortens_a_long_adapter_list(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _script(monkeypatch, models=LORA_MODELS)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # capsys's stdout is not a terminal
    assert cli.main(["models"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rows[1][-1] == "tenant-a,tenant-b"  # short enough: unchanged
    assert rows[2][-1].endswith(" more") and len(rows[2][-1]) <= 48
    assert rows[2][-1].startswith("tenant-00,tenant-01,")


def test_count_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["count-tokens", "Hi there", "--chat"]) == 0
    assert capsys.readouterr().out == "3\n"
    _, args, kwargs = _only_call()
    assert args == (None,) and kwargs["messages"] == [("user", "Hi there")]


def test_connection_flags_reach_the_config() -> None:
    assert cli.main(["models", "--endpoint", "127.0.0.1:6000", "--insecure", "--timeout", "9"]) == 0
    config = StandInClient.instances[0].config
    assert config.endpoint == "127.0.0.1:6000" and config.insecure and config.timeout == 9
    assert config.token == TOKEN


def test_invalid_argument_exits_2_with_field_violations(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = InvalidArgumentError(
        "2 fields are invalid",
        code=grpc.StatusCode.INVALID_ARGUMENT,
        field_violations=[("sampling.temperature", "must be in [0, 2]"), ("sampling.top_k", "x")],
    )
    _script(monkeypatch, error=error)
    assert cli.main(["generate", "Hi", "--temperature", "3"]) == 2
    assert capsys.readouterr().err == (
        "error: INVALID_ARGUMENT: 2 fields are invalid\n"
        "  sampling.temperature: must be in [0, 2]\n"
        "  sampling.top_k: x\n"
    )


def test_violations_already_in_the_message_are_not_repeated(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The server's message is "; ".join("field: description") of its violations.
    error = InvalidArgumentError(
        "prompt: too long; sampling.seed: bad",
        code=grpc.StatusCode.INVALID_ARGUMENT,
        field_violations=[("prompt", "too long"), ("sampling.seed", "bad")],
    )
    _script(monkeypatch, error=error)
    assert cli.main(["generate", "Hi"]) == 2
    assert (
        capsys.readouterr().err == "error: INVALID_ARGUMENT: prompt: too long; sampling.seed: bad\n"
    )


def test_other_errors_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = InternalError("internal error", code=grpc.StatusCode.INTERNAL, request_id="abc")
    _script(monkeypatch, error=error)
    assert cli.main(["models"]) == 1
    err = capsys.readouterr().err
    assert "error: INTERNAL: internal error" in err and "request id: abc" in err


def test_retry_after_is_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = ResourceExhaustedError(
        "limit", code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=1.5
    )
    _script(monkeypatch, error=error)
    assert cli.main(["models"]) == 1
    assert "retry after 1.5 s" in capsys.readouterr().err


def test_error_in_the_middle_of_a_stream(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = InternalError("the engine failed", code=grpc.StatusCode.INTERNAL)
    _script(monkeypatch, stream=[STREAM[0], error])
    assert cli.main(["generate", "Hi"]) == 1
    out, err = capsys.readouterr()
    assert out == " Par" and "error: INTERNAL: the engine failed" in err


def test_ctrl_c_cancels_the_stream_and_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _script(monkeypatch, stream=[STREAM[0], KeyboardInterrupt()])
    assert cli.main(["generate", "Hi"]) == 130
    assert StandInClient.instances[0].stream_closed
    assert "cancelled" in capsys.readouterr().err


def test_ctrl_c_between_deltas_closes_the_stream(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupt while the CLI (not the stream) runs must still close the stream."""
    _script(monkeypatch, stream=STREAM)
    real_write = cli.sys.stdout.write

    def interrupted_write(text: str) -> int:
        if text == "is.":
            raise KeyboardInterrupt
        return real_write(text)

    monkeypatch.setattr(cli.sys.stdout, "write", interrupted_write)
    assert cli.main(["generate", "Hi"]) == 130
    assert StandInClient.instances[0].stream_closed


def test_config_error_exits_2_without_the_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AUTOGLM_ENDPOINT")
    assert cli.main(["generate", "Hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CONFIG: no endpoint")
    assert TOKEN not in err


def test_insecure_refused_for_remote_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "--endpoint", "10.1.2.3:50051", "--insecure"]) == 2
    out, err = capsys.readouterr()
    assert "loopback" in err
    assert TOKEN not in out + err
    assert StandInClient.instances == []


def test_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["generate"])
    assert info.value.code == 2
