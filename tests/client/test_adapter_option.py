"""The client's LoRA adapter: GenerateRequest.adapter, ModelInfo.adapters, `--adapter`."""

from __future__ import annotations

from autoglm.client._requests import Sampling, build_generate_request, model_info_from_proto
from autoglm.client.cli import build_parser
from autoglm.v1 import text_generation_pb2 as pb


def test_the_adapter_goes_in_the_request() -> None:
    request = build_generate_request("hi", messages=None, sampling=Sampling(), adapter="a")
    assert request.adapter == "a"
    assert build_generate_request("hi", messages=None, sampling=Sampling()).adapter == ""


def test_model_info_lists_adapters() -> None:
    info = model_info_from_proto(pb.ModelInfo(name="m", adapters=["a", "b"]))
    assert info.adapters == ("a", "b")


def test_the_cli_takes_an_adapter() -> None:
    args = build_parser().parse_args(["generate", "hi", "--adapter", "a"])
    assert args.adapter == "a"
