"""Small versions of ``benchmarks.stress`` rows that fit in CI (the full table: ``--full``).

Each row runs ``dicom-node serve`` in a process of its own and attacks it
over loopback; the row's pass figure is the assertion. The ``delivery`` row
is not here: it processes phantom series through the AI step (minutes).
"""

from __future__ import annotations

import pytest

from benchmarks import stress

pytestmark = pytest.mark.integration


@pytest.fixture
def dirs(tmp_path):
    work, logs = tmp_path / "work", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    return work, logs


def test_unknown_ae_is_refused_on_both_find_aes_and_sees_no_identities(dirs) -> None:
    result = stress.row_unknown_ae(*dirs)
    assert result.passed, result.figure


def test_length_lies_are_refused_before_buffering(dirs) -> None:
    result = stress.row_pdu_lies(*dirs, connections=5)
    assert result.passed, result.figure


def test_no_canary_name_or_id_reaches_a_log(dirs) -> None:
    work, logs = dirs
    result = stress.row_canary(work, logs)
    found = stress.canaries_in_logs(work, logs)
    assert found == {}, f"{result.figure}: canaries in {found}"


def test_full_disk_refuses_with_a7xx_keeps_nothing_partial_and_resumes(dirs) -> None:
    from benchmarks.stress_limits import row_disk_full

    result = row_disk_full(*dirs, slices=30, mib=24, headroom=5)
    if result.skipped:
        pytest.skip(result.figure)  # not root, or no tmpfs here: it says which
    assert result.passed, result.figure


def test_deflate_bomb_is_refused_before_it_is_inflated(dirs) -> None:
    from benchmarks.stress_limits import row_deflate_bomb

    result = row_deflate_bomb(*dirs, inflated_mib=128)
    assert result.passed, result.figure
