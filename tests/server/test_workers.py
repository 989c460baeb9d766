"""Per-worker settings of `autoglm serve --workers N` (workers.py): pure, no processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.server.models import ModelSpec
from autoglm.server.settings import Settings, SettingsError
from autoglm.server.workers import worker_settings

MODEL = ModelSpec(name="m", triton_model="m", tokenizer_dir=Path("/tmp/m"))


def settings(**kw: object) -> Settings:
    base: dict[str, object] = dict(
        listen="127.0.0.1:0",
        triton_target="127.0.0.1:8001",
        models=(MODEL,),
        insecure_dev=True,
        workers=3,
    )
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def test_worker_zero_keeps_the_address_the_others_share_its_port() -> None:
    s = settings(metrics_listen="127.0.0.1:9464", audit_dir=Path("/var/audit"))
    w0 = worker_settings(s, 0, None)
    assert w0.listen == "127.0.0.1:0"
    w2 = worker_settings(s, 2, 41000)
    assert w2.listen == "127.0.0.1:41000"
    # Own metrics port and own audit hash chain per process.
    assert (w0.metrics_listen, w2.metrics_listen) == ("127.0.0.1:9464", "127.0.0.1:9466")
    assert (w0.audit_dir, w2.audit_dir) == (
        Path("/var/audit/worker-0"),
        Path("/var/audit/worker-2"),
    )


def test_the_openai_port_is_shared_like_grpcs() -> None:
    s = settings(openai_listen="127.0.0.1:0")
    assert worker_settings(s, 0, None).openai_listen == "127.0.0.1:0"
    assert worker_settings(s, 1, 41000, 42000).openai_listen == "127.0.0.1:42000"
    assert worker_settings(settings(), 1, 41000, None).openai_listen is None


def test_free_metrics_ports_stay_free_and_ipv6_is_bracketed() -> None:
    s = settings(listen="[::1]:0", metrics_listen="[::1]:0")
    w1 = worker_settings(s, 1, 5000)
    assert w1.listen == "[::1]:5000"
    assert w1.metrics_listen == "[::1]:0"
    assert worker_settings(settings(metrics_listen=None), 1, 5000).metrics_listen is None


def test_workers_must_be_positive_and_not_with_a_model_repository() -> None:
    with pytest.raises(SettingsError, match="workers"):
        settings(workers=0).validate()
    with pytest.raises(SettingsError, match="workers"):
        settings(models=(), model_repository=Path("/tmp/repo")).validate()
