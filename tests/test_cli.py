"""cli.py: one parser type and one error style for the four scripts (every complaint
one `error:` line, exit code 2, no usage dump), `--help`, the shared options'
parsers (number lists, --format, --threads) and run_cli's exit."""
import os
import subprocess
import sys

import pytest

import cli
import inference
import make_dataset
import make_sample
import outputs
import training
from cli import (
    FORMATS,
    Parser,
    add_threads_option,
    at_failure,
    parse_formats,
    parse_numbers,
    parse_threads,
    run_cli,
)
from utils import GhostError

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"make_sample": make_sample, "make_dataset": make_dataset, "training": training,
           "inference": inference}
DATASET = ["-f", "in.root", "--output", "d", "--track", "matching"]
GIVEN = {"make_sample": [], "make_dataset": DATASET, "training": ["-f", "d"],  # the required
         "inference": ["-f", "in.root"]}

# (script, arguments, the error line's start): argparse's complaints of each kind
# (unknown option, bad type, bad choice, missing option or value), then the
# scripts' own checks and the shared options' parsers.  None reads a file.
REFUSED = [
    ("make_sample", ["--bogus"], "unrecognized arguments: --bogus"),
    ("make_sample", ["--tracks", "many"], "argument --tracks: invalid int value: 'many'"),
    ("make_sample", ["--track", "downstream"], "argument --track: invalid choice: 'downstream'"),
    ("make_sample", ["--seed"], "argument --seed: expected one argument"),
    ("make_sample", ["--tracks", "0"], "--tracks must be >= 1, got 0"),
    ("make_sample", ["--ghost-rate", "1"], "--ghost-rate must be in (0, 1), got 1.0"),
    ("make_dataset", [*DATASET, "--bogus"], "unrecognized arguments: --bogus"),
    ("make_dataset", [*DATASET, "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    ("make_dataset", [*DATASET, "--balance", "none"],
     "argument --balance: invalid choice: 'none'"),
    ("make_dataset", ["-f", "in.root"], "the following arguments are required: --output, --track"),
    ("make_dataset", [*DATASET, "--threads", "0"],
     "argument --threads: must be a whole number of at least 1, got '0'"),
    ("make_dataset", [*DATASET, "--fraction", "2"], "--fraction must be in (0, 1], got 2.0"),
    ("make_dataset", [*DATASET, "--format", "gif"], "--format must be png, pdf or both, got 'gif'"),
    ("training", ["-f", "d", "--bogus"], "unrecognized arguments: --bogus"),
    ("training", ["-f", "d", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    ("training", ["-f", "d", "--space", "wide"], "argument --space: invalid choice: 'wide'"),
    ("training", [], "the following arguments are required: -f/--filename"),
    ("training", ["-f", "d", "--epochs", "0"], "--epochs must be at least 1"),
    ("training", ["-f", "d", "--gpu", "1", "--nocuda"], "--gpu and --nocuda contradict"),
    ("training", ["-f", "d", "--format", "png,svg"],
     "--format must be png, pdf or both, got 'png,svg'"),
    ("inference", ["-f", "in.root", "--bogus"], "unrecognized arguments: --bogus"),
    ("inference", ["-f", "in.root", "--batch", "x"], "argument --batch: invalid int value: 'x'"),
    ("inference", ["-f", "in.root", "--backend", "tf"],
     "argument --backend: invalid choice: 'tf'"),
    ("inference", ["-f", "in.root", "--model"], "argument --model: expected one argument"),
    ("inference", [], "-f/--filename is required (or --export-cpp alone)"),
    ("inference", ["-f", "in.root", "--threads", "x"],
     "argument --threads: must be a whole number of at least 1, got 'x'"),
    ("inference", ["-f", "in.root", "--thresholds", "a"],
     "--thresholds must be comma-separated numbers, got 'a'"),
    ("inference", ["-f", "in.root", "--working-point", "1"],
     "--working-point must be numbers in (0, 1), got '1'"),
    ("inference", ["-f", "in.root", "--format", ""], "--format must be png, pdf or both, got ''"),
]


@pytest.mark.parametrize("script,argv,start", REFUSED,
                         ids=[f"{s}:{' '.join(a) or 'nothing'}" for s, a, _ in REFUSED])
def test_a_bad_command_line_is_one_error_line_and_exit_2(script, argv, start, tmp_path,
                                                         monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "_exit", lambda rc: pytest.fail(f"{script} {argv} ran to the end"))
    with pytest.raises(SystemExit) as ended:
        run_cli(SCRIPTS[script].main, argv)
    out, err = capsys.readouterr()
    assert ended.value.code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), err
    assert os.listdir(tmp_path) == []


@pytest.fixture(autouse=True)
def own_failure_hooks(monkeypatch):
    """run_cli here calls only this test's failure hooks, never an earlier test's."""
    monkeypatch.setattr(cli, "_at_failure", [])
    monkeypatch.setattr(outputs, "_created", [])


def _run(script, *argv):
    return subprocess.run([sys.executable, os.path.join(ROOT_DIR, f"{script}.py"), *argv],
                          capture_output=True, text=True, cwd=ROOT_DIR, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0(script):
    proc = _run(script, "--help")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith(f"usage: {script}.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_unknown_option_is_one_line_without_usage(script):
    proc = _run(script, *GIVEN[script], "--no-such-option")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["error: unrecognized arguments: --no-such-option"]


def test_parser_errors_are_ghost_errors_and_its_description_is_kept():
    p = Parser("first line\n    indented as written")
    p.add_argument("--n", type=int, required=True)
    with pytest.raises(GhostError, match="^the following arguments are required: --n$"):
        p.parse_args([])
    with pytest.raises(GhostError, match="^argument --n: invalid int value: 'x'$"):
        p.parse_args(["--n", "x"])
    assert "first line\n    indented as written\n" in p.format_help()


def test_number_lists():
    assert parse_numbers("0.5,0.1, 0.5", "--x", 0, 1) == [0.1, 0.5]
    assert parse_numbers("0.9,0.5,0.9", "--x", 0, 1, sort=False) == [0.9, 0.5]
    assert parse_numbers("0,1", "--x", 0, 1) == [0.0, 1.0]
    assert parse_numbers("1e-3,", "--x", 0, 1, open_=True) == [0.001]
    for text, message in [
        ("a", "--x must be comma-separated numbers, got 'a'"),
        ("0.5,nan", "--x must be numbers in [0, 1], got '0.5,nan'"),
        ("", "--x must be numbers in [0, 1], got ''"),
        (",,", "--x must be numbers in [0, 1], got ',,'"),
        ("1.5", "--x must be numbers in [0, 1], got '1.5'"),
    ]:
        with pytest.raises(GhostError) as refused:
            parse_numbers(text, "--x", 0, 1)
        assert str(refused.value) == message
    with pytest.raises(GhostError, match=r"^--x must be numbers in \(0, 1\), got '0,0.5'$"):
        parse_numbers("0,0.5", "--x", 0, 1, open_=True)


def test_formats():
    assert FORMATS == ("png", "pdf")
    assert parse_formats("png") == ("png",)
    assert parse_formats(" PDF, png,pdf ") == ("pdf", "png")
    for text in ("gif", "", " , ", "png,gif"):
        with pytest.raises(GhostError) as refused:
            parse_formats(text)
        assert str(refused.value) == f"--format must be png, pdf or both, got {text!r}"


def test_threads():
    assert parse_threads("1") == 1 and parse_threads(" 16 ") == 16
    for text in ("0", "-2", "x", "1.5", ""):
        with pytest.raises(GhostError) as refused:
            parse_threads(text)
        assert str(refused.value) == \
            f"argument --threads: must be a whole number of at least 1, got {text!r}"
    p = Parser(None)
    add_threads_option(p, 2_000_000)
    assert p.parse_args([]).threads is None and p.parse_args(["--threads", "3"]).threads == 3
    assert "2,000,000 entries" in " ".join(p.format_help().split())


def test_run_cli_calls_the_failure_hooks_once(capsys):
    called = []
    hook = lambda: called.append(1)
    at_failure(hook)
    at_failure(hook)  # once, however often it is asked for

    def main(argv):
        raise GhostError(f"bad {argv[0]}")
    with pytest.raises(SystemExit) as ended:
        run_cli(main, ["input"])
    assert ended.value.code == 2 and called == [1]
    assert capsys.readouterr().err == "error: bad input\n"


def _options(help_text):
    """{option strings: its help text} of a --help's options."""
    blocks, key = {}, None
    for line in help_text.split("\n\nfiles ")[0].splitlines():
        if line.startswith("  -"):
            key = line.split("  ")[1].strip() if "  " in line.strip() else line.strip()
            blocks[key] = line
        elif key and line.startswith(" " * 10):
            blocks[key] += " " + line.strip()
        elif not line.startswith(" "):
            key = None
    return blocks


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_shows_its_default(script):
    """An option that takes a value says its default (or, without one, what happens
    then); --help itself and the flags (off unless given) need not."""
    options = _options(_run(script, "--help").stdout)
    assert len(options) >= 8
    takes_value = {k: v for k, v in options.items()
                   if not k.startswith("-h,") and any(w.isupper() or w.startswith("{")
                                                       for w in k.split()[1:2])}
    silent = [k for k, v in takes_value.items() if "default" not in v and "required" not in v]
    assert silent == []


def test_options_are_spelled_with_hyphens_the_seeds_spelling_kept():
    """--num-samples is the spelling; the seed's --num_samples still works."""
    for spelling in ("--num-samples", "--num_samples", "-n"):
        assert training.parse_args(["-f", "d", spelling, "3"]).num_samples == 3
    for script in SCRIPTS:
        names = {n for k in _options(_run(script, "--help").stdout) for n in k.split(", ")
                 for n in [n.split()[0]]}
        assert {n for n in names if "_" in n} <= {"--num_samples"}, script
