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


def test_the_heartbeat_names_the_trials_and_the_time_left(monkeypatch, capsys):
    """Tune's callbacks driven by hand (no Ray started), one trial at a time: trial 1
    reached epoch 1 of 8 10 s after its start, epoch 2 2 s later; two trials to come.
    Left: 2 s * (5 - 2) for trial 1, (10 s + 2 s * (5 - 1)) for each other: 42 s."""
    import time
    from types import SimpleNamespace

    import search_log
    setup = SimpleNamespace(epochs=8, n_features=13, n_inputs=lambda: 13)
    line, heartbeat = search_log.search_callbacks(3, setup, grace=3)
    trial = SimpleNamespace(trial_id="a", status="RUNNING", path="p", last_result={},
                            config={"hidden": [8], "activation": "relu", "lr": 1e-3,
                                    "weight_decay": 1e-4, "batch": 512})
    heartbeat.on_step_begin(0, [])
    heartbeat.on_trial_start(0, [trial], trial)
    heartbeat.begun["a"] = time.monotonic() - 10.0
    monkeypatch.setattr(search_log, "silent_for", lambda: 99.0)
    for epoch, seconds in ((1, 7.0), (2, 2.0)):
        heartbeat.on_trial_result(0, [trial], trial, {"time_this_iter_s": seconds,
                                                      "epoch": epoch, "auc": 0.9,
                                                      "rejection@0.99": 0.5})
        heartbeat.on_step_end(0, [trial])
    out = capsys.readouterr().out.splitlines()
    assert out == ["searching: 3 trials of up to 8 epochs ...",
                   "  trial 1/3 epoch 1/8 val AUC 0.9000 rej@99% 0.5000",  # no estimate yet
                   "  trial 1/3 epoch 2/8 val AUC 0.9000 rej@99% 0.5000; about 42 s left"]
    trial.last_result = {"epoch": 3, "loss": 0.3, "auc": 0.91, "rejection@0.99": 0.55}
    line.on_trial_complete(0, [trial], trial)
    assert capsys.readouterr().out.startswith("[1/3] hidden 8 ")
