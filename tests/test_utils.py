"""utils.py: the heartbeat of a long step that prints nothing itself."""
import time

import utils


def test_a_silent_step_has_a_heartbeat(monkeypatch, capsys):
    monkeypatch.setattr(utils, "HEARTBEAT", 0.3)
    with utils.heartbeat("fitting the baseline"):
        time.sleep(1.5)
    beats = capsys.readouterr().out.splitlines()
    assert beats and all(b.startswith("  still fitting the baseline (") for b in beats)


def test_no_heartbeat_while_the_step_speaks(monkeypatch, capsys):
    monkeypatch.setattr(utils, "HEARTBEAT", 5.0)
    with utils.heartbeat("training"):
        for _ in range(8):
            utils.log("epoch")
            time.sleep(0.15)
    assert set(capsys.readouterr().out.splitlines()) == {"epoch"}
