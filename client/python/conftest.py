# SPDX-License-Identifier: MIT
"""Fixtures shared by the binding's tests (pytest loads this file for every test here)."""

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_kvtier import _daemon_path, _wait_connectable  # noqa: E402


@pytest.fixture
def gpu_daemon(tmp_path):
    """A kvtierd with a GPU tier (64 MiB) over a 256 MiB host tier: its socket path."""
    sock = str(tmp_path / "kvtier.sock")
    log = open(tmp_path / "kvtierd.log", "wb")
    proc = subprocess.Popen([_daemon_path(), "-f", "-s", sock, "-o", "host.capacity=256MiB",
                             "-o", "gpu.capacity=64MiB"], stdout=log, stderr=subprocess.STDOUT)
    assert _wait_connectable(sock, proc), (tmp_path / "kvtierd.log").read_text()
    try:
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
