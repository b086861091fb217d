"""The original CoreMQ client (github.com/deejross/coremq, not vendored here)
and this package's MessageQueue make the same calls against the same broker
and must get the same answers. Set COREMQ_ORIGINAL_PYTHONPATH to a directory
holding the original's ``coremq`` package (its client.py and common.py) to
run it; test_sync.py's test_original_client_calls_work_the_same checks the
same shapes without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ORIGINAL = os.environ.get("COREMQ_ORIGINAL_PYTHONPATH")


@pytest.mark.skipif(not ORIGINAL, reason="COREMQ_ORIGINAL_PYTHONPATH not set: the original "
                    "client is not part of this repository")
def test_same_answers_as_the_original_client(broker):
    def session(path, which):
        r = subprocess.run([sys.executable, str(HERE / "original_session.py"), str(broker.port),
                            which, "session." + which], env={"PYTHONPATH": path},
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    orig = session(ORIGINAL, "orig")
    new = session(str(HERE.parent), "new")
    assert len(orig) == len(new) == 13
    # Every step alike but the last: an ERROR reply is returned by the
    # original and raised (PermissionDenied/CoreMQError) by the new class.
    assert orig[:-1] == new[:-1]
    assert "ERROR" in orig[-1] and new[-1] == '["error", "raises"]'
