"""Shared fixtures: a real Tansu broker per test session, unique topics, chdb databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backbone.config import Settings, load_settings
from backbone.embedded.broker import TansuBroker

pytest_plugins = ["reliability_summary"]  # the reliability suite's summary table

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """One real Tansu broker for the whole session (memory storage, loopback, free port)."""
    log_file = tmp_path_factory.mktemp("broker") / "tansu.log"
    with TansuBroker(log_file=log_file) as b:
        yield b


@pytest.fixture
def settings(broker: TansuBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing at the session broker and a private data dir (its own chdb path)."""
    for key in list(os.environ):
        if key.startswith("BACKBONE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap)
    monkeypatch.setenv("BACKBONE_DATA_DIR", str(tmp_path / "data"))
    return load_settings()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and database names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
