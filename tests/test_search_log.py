"""search_log.py: the search's estimate of the time left (what ASHA is expected to
train, spread over the trials running at once)."""
import pytest

from search_log import about, expected_epochs, time_left


@pytest.mark.parametrize("done,epochs,grace,expected", [
    (0, 8, 3, 3 + 3 / 2 + 2 / 4),  # rungs at 3 and 6: half go on past each
    (3, 8, 3, 6 + 2 / 2),          # promoted past the first rung
    (7, 8, 3, 8),                  # past the last rung: to the end
    (0, 1, 1, 1),                  # one epoch: no rung
    (0, 20, 3, 3 + 3 / 2 + 6 / 4 + 8 / 8),
])
def test_expected_epochs_under_asha(done, epochs, grace, expected):
    assert expected_epochs(done, epochs, grace) == pytest.approx(expected)


def test_time_left_spreads_the_trials_over_the_slots():
    assert time_left([10, 10, 10], 2) == 20
    assert time_left([30, 10, 10], 2) == 30
    assert time_left([5, 5], 0) == 10  # at least one slot
    assert time_left([], 4) == 0


def test_about_says_seconds_then_minutes():
    assert about(42.4) == "about 42 s left"
    assert about(0.2) == "about 1 s left"
    assert about(600) == "about 10 min left"
