"""`autoglm serve --model NAME=TRITON_MODEL:DIR[,key=value…]` and the image and request-size
settings: parsed into ModelSpec / Settings by the real CLI, and every bad value refused naming
the option (exit 2, the message on stderr)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from autoglm.server import cli
from autoglm.server.models import ModelSpec
from autoglm.server.settings import (
    DEFAULT_GRPC_MAX_RECEIVE_BYTES,
    Settings,
    SettingsError,
)
from autoglm.server.telemetry import logs
from autoglm.server.vision import ImageLimits


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No AUTOGLM_* of the caller's; main()'s logging set-up left alone."""
    for name in [n for n in os.environ if n.startswith("AUTOGLM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)
    yield


def parse(item: str) -> ModelSpec:
    spec = cli._model_spec(item, ModelSpec)
    assert isinstance(spec, ModelSpec)
    return spec


def test_a_plain_model_keeps_the_defaults() -> None:
    assert parse("smollm2=smollm2_engine:/models/smol") == ModelSpec(
        name="smollm2", triton_model="smollm2_engine", tokenizer_dir=Path("/models/smol")
    )


def test_every_option_lands_in_the_spec() -> None:
    spec = parse(
        "autoglm-phone-9b=autoglm_phone:/models/AutoGLM-Phone-9B,engine=vllm,"
        "image_max_pixels=5000000,max_context_tokens=25480,max_output_tokens=3000,"
        "default_max_tokens=512"
    )
    assert spec == ModelSpec(
        name="autoglm-phone-9b",
        triton_model="autoglm_phone",
        tokenizer_dir=Path("/models/AutoGLM-Phone-9B"),
        engine="vllm",
        max_context_tokens=25480,
        max_output_tokens=3000,
        default_max_tokens=512,
        image_max_pixels=5_000_000,
    )


def test_only_the_first_colon_ends_the_triton_model() -> None:
    assert parse("m=t:C:/models/x").tokenizer_dir == Path("C:/models/x")


@pytest.mark.parametrize("item", ["m", "m=t", "=t:/d", "m=:/d", "m=t:", ",engine=vllm"])
def test_a_malformed_model_is_refused(item: str) -> None:
    with pytest.raises(SettingsError, match=r"^--model: .* is not NAME=TRITON_MODEL:TOKENIZER_DIR"):
        parse(item)


@pytest.mark.parametrize(
    "option", ["colour=red", "engine", "engine=", "=vllm", "max_tokens=5", "ENGINE=vllm"]
)
def test_an_unknown_or_empty_option_is_refused_naming_it(option: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse(f"m=t:/d,{option}")
    message = str(info.value)
    assert message.startswith(f"--model: {option!r} in 'm=t:/d,{option}'")
    assert "image_max_pixels" in message and "engine" in message  # the keys it takes


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("image_max_pixels", "lots"),
        ("image_max_pixels", "5e6"),
        ("max_context_tokens", "25_480x"),
        ("max_output_tokens", "3000.0"),
        ("default_max_tokens", "0x10"),
    ],
)
def test_a_bad_integer_is_refused_naming_the_option(key: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse(f"m=t:/d,{key}={value}")
    assert str(info.value) == f"--model: {key} must be an integer, got {value!r}"


# ---- through the real CLI ---------------------------------------------------------------------


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The Settings `serve` builds (recorded when it validates them; --print-config then stops)."""
    seen: list[Settings] = []
    validate = Settings.validate

    def record(self: Settings) -> None:
        seen.append(self)
        validate(self)

    monkeypatch.setattr(Settings, "validate", record)
    return seen


def serve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(["serve", "--insecure-dev", *argv, "--print-config"])
    return code, capsys.readouterr().err


def test_serve_builds_the_specs_and_limits(
    capsys: pytest.CaptureFixture[str], built: list[Settings]
) -> None:
    code, err = serve(
        capsys,
        "--model", "smol=smol:/m/smol",
        "--model", "vl=vl:/m/vl,engine=cpu_reference_vl,image_max_pixels=1000000",
        "--max-images", "3",
        "--max-image-bytes", "4000000",
        "--grpc-max-receive-bytes", "8388608",
    )  # fmt: skip
    assert code == 0, err
    (settings,) = built
    assert [(m.name, m.engine, m.image_max_pixels) for m in settings.models] == [
        ("smol", "cpu_reference", None),
        ("vl", "cpu_reference_vl", 1_000_000),
    ]
    assert settings.image_limits == ImageLimits(max_images=3, max_bytes=4_000_000)
    assert settings.grpc_max_receive_bytes == 8 << 20


def test_serve_defaults(capsys: pytest.CaptureFixture[str], built: list[Settings]) -> None:
    code, err = serve(capsys, "--model", "m=m:/m")
    assert code == 0, err
    (settings,) = built
    assert settings.image_limits == ImageLimits()  # 10 images of up to 20 MiB
    assert settings.grpc_max_receive_bytes == DEFAULT_GRPC_MAX_RECEIVE_BYTES == 32 << 20


def test_the_image_limits_from_the_environment(
    capsys: pytest.CaptureFixture[str], built: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOGLM_MAX_IMAGES", "4")
    monkeypatch.setenv("AUTOGLM_GRPC_MAX_RECEIVE_BYTES", "2048")
    code, err = serve(capsys, "--model", "m=m:/m")
    assert code == 0, err
    assert built[0].image_limits.max_images == 4
    assert built[0].grpc_max_receive_bytes == 2048


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "m=m:/m,colour=red"], "--model: 'colour=red'"),
        (["--model", "m=m:/m,image_max_pixels=many"], "--model: image_max_pixels must be"),
        (["--model", "m=m:/m", "--grpc-max-receive-bytes", "1023"], "grpc_max_receive_bytes"),
        (["--model", "m=m:/m", "--max-images", "-1"], "max_images: must be in [0, 100]"),
        (["--model", "m=m:/m", "--max-images", "101"], "max_images: must be in [0, 100]"),
        (["--model", "m=m:/m", "--max-image-bytes", "0"], "max_image_bytes: must be in [1, "),
    ],
)
def test_serve_refuses_naming_the_setting(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, err = serve(capsys, *argv)
    assert code == 2
    assert message in err


# ---- Settings.validate ------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        triton_target="127.0.0.1:8001",
        models=(ModelSpec(name="m", triton_model="m", tokenizer_dir=tmp_path),),
        insecure_dev=True,
    )


def test_the_limits_at_their_bounds_are_valid(settings: Settings) -> None:
    settings.validate()
    replace(settings, grpc_max_receive_bytes=1024).validate()
    replace(settings, image_limits=ImageLimits(max_images=0, max_bytes=1)).validate()
    replace(settings, image_limits=ImageLimits(max_images=100)).validate()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"grpc_max_receive_bytes": 1023}, "grpc_max_receive_bytes"),
        ({"grpc_max_receive_bytes": -1}, "grpc_max_receive_bytes"),
        ({"image_limits": ImageLimits(max_images=-1)}, "max_images"),
        ({"image_limits": ImageLimits(max_images=101)}, "max_images"),
        ({"image_limits": ImageLimits(max_bytes=0)}, "max_image_bytes"),
    ],
)
def test_validate_refuses_naming_the_setting(
    settings: Settings, change: dict[str, object], field: str
) -> None:
    with pytest.raises(SettingsError, match=f"^{field}: "):
        replace(settings, **change).validate()  # type: ignore[arg-type]
