"""The chaos soak in CI: three minutes of faults falling on a busy tree, a new seed each run.

``bench/chaos.py`` is the soak and its oracle (docs/architecture.md, "The chaos soak"); the
30-minute run before a release is in bench/README.md. The seed is printed at the start, and
a failure prints it with the history of the faults. To replay one:
``UPLOADERD_CHAOS_SEED=N ./dev test tests/chaos`` (or ``bench/chaos.py --seed N``).
"""

from __future__ import annotations

import os
import secrets

import pytest

from bench import chaos

MINUTES = float(os.environ.get("UPLOADERD_CHAOS_MINUTES", "3"))
GAP = (3.0, 12.0)  # seconds between two faults: more of them than the long soak's 5-30 s


@pytest.mark.timeout(int(MINUTES * 60) + 900)
def test_faults_falling_together_lose_tear_strand_and_fail_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed = int(os.environ.get("UPLOADERD_CHAOS_SEED") or secrets.randbelow(2**31))
    with capsys.disabled():
        print(f"\nchaos seed {seed} (UPLOADERD_CHAOS_SEED={seed} replays it)", flush=True)
    with chaos.workspace(None) as work:  # each fault is printed: pytest shows them on failure
        report = chaos.soak(seed, MINUTES, work, gap=GAP, drain_timeout=300)
    with capsys.disabled():
        print(report.text(), flush=True)
    assert report.ok, report.text()
    assert len(report.faults) >= MINUTES * 60 / (GAP[1] + 16), report.text()
