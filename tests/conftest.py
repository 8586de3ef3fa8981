"""Shared fixtures: a private state directory per test session, and root checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TESTBED_STATE", "/run/testbed-tests")


@pytest.fixture(scope="session")
def state_root() -> Path:
    return Path(os.environ["TESTBED_STATE"])


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the lab makes network namespaces and runs libvirtd")
