"""What the search says on the console: one line per finished (or failed) trial, and
between them a heartbeat at most every HEARTBEAT seconds of silence (the trials
training, their epoch and validation metrics) ending with an estimate of the time
left.  Ray Tune callbacks, run in the driver; Ray is imported inside the functions.
"""
import contextlib
import time

from architecture import hidden_widths, macs_and_params
from utils import HEARTBEAT, log, one_line, silent_for


def describe_params(params, n_features):
    """A trial's hyperparameters in one line, with its cost per track."""
    hidden = hidden_widths(params)
    macs, n_params = macs_and_params(n_features, hidden)
    text = (f"hidden {'x'.join(str(w) for w in hidden):<11} {macs:>6,} MACs "
            f"{n_params:>6,} params  {params['activation']:<10} lr {params['lr']:.2e}")
    if "weight_decay" in params:
        text += f" wd {params['weight_decay']:.1e} batch {params['batch']}"
    else:
        text += f" {params['optimizer']}"
    return text


def expected_epochs(done, epochs, grace, factor=2):
    """The epochs a trial at epoch `done` is expected to reach under ASHA (rungs at
    grace, grace * factor, ...; a trial goes on past a rung with odds 1 / factor):
    what the estimate of the time left counts on."""
    rungs = [r for r in (grace * factor ** k for k in range(32)) if r < epochs]
    ahead = [r for r in rungs if r > done] + [epochs]
    total, odds, last = float(ahead[0]), 1.0, ahead[0]
    for rung in ahead[1:]:
        odds /= factor
        total, last = total + odds * (rung - last), rung
    return total


def time_left(remaining, slots):
    """Seconds until `remaining` (each trial's expected seconds still to train,
    started or not) are trained on `slots` parallel trials, longest first."""
    lanes = [0.0] * max(1, slots)
    for t in sorted(remaining, reverse=True):
        lanes[lanes.index(min(lanes))] += t
    return max(lanes)


def about(seconds):
    return f"about {seconds / 60:.0f} min left" if seconds >= 120 else \
        f"about {max(seconds, 1):.0f} s left"


def search_callbacks(total, setup, grace):
    """The Ray Tune callbacks of the console: TrialLine (a line per finished trial),
    Heartbeat (the trials training, and the time left)."""
    from ray import tune

    class Heartbeat(tune.Callback):
        """The heartbeat, and the time left: from the epochs after a trial's first
        (its first also pays the trial's start) and, for the trials to come, from the
        measured time between a trial's start and its first epoch."""

        def __init__(self):
            self.seconds, self.slots, self.last, self.started = [], 1, {}, False
            self.begun, self.first = {}, []  # a trial's start; seconds to its epoch 1

        def on_step_begin(self, iteration, trials, **info):
            if not self.started:  # in Tune's loop: its handlers are set, its state kept
                self.started = True
                log(f"searching: {total} trials of up to {setup.epochs} epochs ...")

        def on_trial_start(self, iteration, trials, trial, **info):
            self.begun[trial.trial_id] = time.monotonic()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if trial.trial_id in self.last:
                self.seconds.append(result["time_this_iter_s"])
            elif trial.trial_id in self.begun:
                self.first.append(time.monotonic() - self.begun[trial.trial_id])
            self.last[trial.trial_id] = result
            self.slots = max(self.slots, sum(t.status == "RUNNING" for t in trials))

        def estimate(self, trials, skip=None):
            """Seconds left; None before a trial's second epoch (`skip`: a trial
            just finished)."""
            if not self.seconds:
                return None
            epoch = sum(self.seconds) / len(self.seconds)
            first = sum(self.first) / len(self.first) if self.first else epoch
            now = time.monotonic()

            def left(trial):
                done = self.last.get(trial.trial_id, {}).get("epoch", 0) if trial else 0
                rest = epoch * (expected_epochs(done, setup.epochs, grace) - max(done, 1))
                if done:
                    return rest
                begun = self.begun.get(trial.trial_id, now) if trial else now
                return rest + max(first - (now - begun), 0.0)
            todo = [left(t) for t in trials if t is not skip
                    and t.status in ("RUNNING", "PENDING", "PAUSED")]
            todo += [left(None)] * (total - len(trials))
            return time_left(todo, self.slots)

        def ending(self, trials, skip=None):
            seconds = self.estimate(trials, skip)
            return "" if seconds is None else f"; {about(seconds)}"

        def on_step_end(self, iteration, trials, **info):
            if silent_for() < HEARTBEAT:
                return
            nan = float("nan")
            running = [(i + 1, t) for i, t in enumerate(trials) if t.status == "RUNNING"]
            parts = []
            for i, t in running:
                r = self.last.get(t.trial_id)
                parts.append(f"trial {i}/{total} " + (
                    f"epoch {r['epoch']}/{setup.epochs} val AUC {r.get('auc', nan):.4f} "
                    f"rej@99% {r.get('rejection@0.99', nan):.4f}" if r else "starting"))
            log("  " + ("; ".join(parts) or "waiting for the trials to start")
                + self.ending(trials))

    class TrialLine(tune.Callback):
        def __init__(self, heartbeat):
            self.heartbeat = heartbeat

        @staticmethod
        def finished(trials, trial):
            return 1 + sum(t is not trial and t.status in ("TERMINATED", "ERROR")
                           for t in trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            stop = "" if r.get("epoch") == setup.epochs else "  (stopped early by ASHA)"
            nan = float("nan")
            n = self.finished(trials, trial)
            log(f"[{n}/{total}] "
                f"{describe_params(trial.config, setup.n_inputs())}  epochs "
                f"{r.get('epoch', 0):>3}  val loss {r.get('loss', nan):.4f}"
                f"  AUC {r.get('auc', nan):.4f}  rej@99% {r.get('rejection@0.99', nan):.4f}"
                f"{stop}" + (self.heartbeat.ending(trials, trial) if n < total else ""))

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"[{self.finished(trials, trial)}/{total}] trial {trial.trial_id} failed: "
                f"{trial_error(trial)} (its log: {trial.path})")

    heartbeat = Heartbeat()
    return [TrialLine(heartbeat), heartbeat]


def trial_error(trial):
    """The last line of a failed trial's error (Ray writes the whole traceback)."""
    with contextlib.suppress(OSError, TypeError), open(trial.error_file) as f:
        return one_line(f.read())
    return "see its error.txt"
