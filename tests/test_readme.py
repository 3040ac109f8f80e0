"""README.md's code blocks, as written (issue #18, "docs that run"): a README that
drifts from the code fails the suite.

Every fenced block is run, compiled or checked against what the runs made; the few
that cannot run here are named in EXEMPT with the reason, and checked statically.
The blocks that run do so in README order, as one user's session (the fixture
`readme_session`), in a scratch folder laid out as the README assumes: the scripts
in the working folder, `python` the interpreter running the tests,
`../data/Data.root` the suite's small matching file (conftest.matching_file) and
`FILE.root` the sample that the README's make_sample.py block makes.  Bash blocks run
with `bash -e`, Python blocks with `python -`, a C++ or CUDA block that names its file
in its first line (`// score.cpp: ...`) is written to that file; the CUDA file is
compiled as host code (g++, `__global__` defined away) everywhere, and with the
nvcc command of its first line wherever `nvcc` exists."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import forkserver
import pytest

from helpers import CXX, ROOT_DIR, fork_server

README = Path(ROOT_DIR) / "README.md"
NVCC = shutil.which("nvcc")
LANGUAGES = {"bash", "python", "cpp", "cuda", "text", ""}  # "": a diagram; "text": output
TIMEOUT = 600  # seconds for one block


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""
    line: int      # the line of its opening fence
    lang: str
    text: str
    heading: str   # the heading it sits under

    @property
    def id(self):
        return f"L{self.line}-{self.lang or 'diagram'}"

    @property
    def file_name(self):
        """A C++/CUDA block's file: its first line is `// NAME.cpp: ...` (or .cu)."""
        m = re.match(r"// (\w+\.(?:cpp|cu)):", self.text)
        return m.group(1) if m else None


def readme_blocks(text):
    """The fenced blocks of a Markdown text, in order."""
    blocks, heading, fence = [], "", None
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif fence is None and line.startswith("```"):
            fence, body = (number, line[3:].strip()), []
        elif fence is not None and line.startswith("```"):
            blocks.append(Block(fence[0], fence[1], "\n".join(body) + "\n", heading))
            fence = None
        elif fence is not None:
            body.append(line)
    assert fence is None, f"README.md: the block of line {fence[0]} is not closed"
    return blocks


BLOCKS = readme_blocks(README.read_text())

# The blocks that cannot run here: a text found in the block -> why.  Each is still
# checked statically (test_exempt_block_is_checked_statically).
EXEMPT = {
    "make demo": "`make test` is this suite itself, and `make demo` (a 200,000-track "
                 "sample, a 4-trial search, the full analysis) takes minutes; checked: "
                 "`make -n` knows both targets, and the demo makes a 200,000-track sample",
    "ray start --head": "starts a Ray cluster over several machines; its single-node form "
                        "is run by tests/test_search.py (test_join_an_existing_ray_cluster); "
                        "checked: every `ray` option exists (`ray start --help`)",
    "onnxruntime_cxx_api.h": "onnxruntime's C++ API: the onnxruntime wheel has no C++ "
                             "headers or library; checked: the file, input and output names "
                             "and the width are the matching model's",
}


def exemption(block):
    found = [key for key in EXEMPT if key in block.text]
    assert len(found) <= 1, (block.id, found)
    return found[0] if found else None


RUN = [b for b in BLOCKS if exemption(b) is None]
STATIC = [b for b in BLOCKS if exemption(b) is not None]


def expand_braces(word):
    """Shell brace expansion of one word: a_{b,c}.x -> [a_b.x, a_c.x]."""
    m = re.search(r"\{([^{}]*)\}", word)
    if not m:
        return [word]
    return [out for alt in m.group(1).split(",")
            for out in expand_braces(word[:m.start()] + alt + word[m.end():])]


def named_files(text):
    """The file names a diagram names: braces expanded, `a.pkl/.json` as a.pkl, a.json."""
    text = re.sub(r"(\w+)\.(\w+)/\.(\w+)", r"\1.\2 \1.\3", text)
    return [name for word in re.findall(r"[\w{},]+\.(?:npy|json|pth|pkl|onnx|hpp)", text)
            for name in expand_braces(word)]


# ---------------------------------------------------------------------------
# the session: every runnable block, in order


@dataclass
class Session:
    work: Path      # the working folder (the scripts, and what the blocks write)
    data: Path      # ../data
    results: dict   # block id -> CompletedProcess, or {"host": ..., "nvcc": ...}


def _run(cmd, work, env, stdin=None):
    return subprocess.run(cmd, cwd=work, env=env, input=stdin, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _compile_cuda(block, work, env):
    """The CUDA file as host code with g++ (`__global__` defined away, CUDA's thread
    indices declared), and with the nvcc command of its first line where nvcc exists."""
    stub = work / "cuda_as_host_code.h"
    stub.write_text("struct ghost_dim3 { unsigned x, y, z; };\n"
                    "static const ghost_dim3 blockIdx{}, blockDim{}, threadIdx{};\n")
    host = _run([CXX, "-std=c++17", "-Wall", "-x", "c++", "-D__global__=", "-include",
                 str(stub), "-I.", "-c", block.file_name, "-o", "cuda_as_host_code.o"],
                work, env)
    nvcc = None
    if NVCC:
        command = block.text.splitlines()[0].split(":", 1)[1]
        nvcc = _run(shlex.split(command), work, env)
    return {"host": host, "nvcc": nvcc}


def run_block(block, work, env, python):
    if block.lang == "bash":
        return _run(["bash", "-e", "-o", "pipefail", "-c", block.text], work, env)
    if block.lang == "python":
        return _run([python, "-"], work, env, stdin=block.text)
    if block.lang in ("cpp", "cuda"):
        (work / block.file_name).write_text(block.text)
        return _compile_cuda(block, work, env) if block.lang == "cuda" else None
    return None  # a diagram: checked against what the session made


@pytest.fixture(scope="module")
def readme_session(tmp_path_factory, matching_file):
    """Every runnable block of the README, run in order in one scratch folder (the
    training block starts a Ray search)."""
    root = tmp_path_factory.mktemp("readme")
    work, data, bin_dir = root / "work", root / "data", root / "bin"
    for folder in (work, data, bin_dir):
        folder.mkdir()
    for script in Path(ROOT_DIR).glob("*.py"):
        (work / script.name).symlink_to(script)
    (data / "Data.root").symlink_to(matching_file)
    (work / "FILE.root").symlink_to("sample.root")  # made by the make_sample.py block
    # `python`: a toolkit script or code on stdin runs in a child of the warm fork
    # server (helpers.fork_server), with the block's streams, folder and environment;
    # anything else is the real interpreter
    server, real = fork_server(), shlex.quote(sys.executable)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {real} -S {shlex.quote(forkserver.__file__)} python '
                      f'{shlex.quote(server.socket_path)} {real} "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    results = {block.id: run_block(block, work, env, str(python)) for block in RUN}
    return Session(work, data, results)


def _shape(line):
    """A console line with its numbers and file names left out: what a quoted output
    shares with any run's."""
    line = re.sub(r"[\w./-]+\.(root|onnx|html)\b", "FILE", line)
    return re.sub(r"\d[\d,.]*", "N", line).rstrip()


def _ran(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return proc.stdout


def _tracks():
    """The tracks of FILE.root (the make_sample.py block's sample.root)."""
    m = re.search(r"--tracks (\d+)", next(b.text for b in BLOCKS if "make_sample.py" in b.text))
    return int(m.group(1))


def check_onnxruntime_python(session, out):
    """Real tracks, one line each for a real track, a ghost the cut rejects, a ghost
    it keeps, then the efficiency and rejection at the model's threshold."""
    lines = out.splitlines()
    kinds = [re.fullmatch(r"track \d+ \((real|ghost)\): p = [01]\.\d{3} -> (kept|rejected)",
                          line) for line in lines[:3]]
    assert all(kinds), lines
    assert [m.group(1) for m in kinds] == ["real", "ghost", "ghost"], lines
    assert [m.group(2) for m in kinds[1:]] == ["rejected", "kept"], lines
    assert re.fullmatch(r"at threshold [01]\.\d{3}: \d+\.\d% of the real tracks kept, "
                        r"\d+\.\d% of the ghosts rejected", lines[3]), lines
    n_features = len(_model_features(session))
    assert (session.work / "tracks.bin").stat().st_size == _tracks() * n_features * 4


def _model_features(session):
    import onnxruntime as ort
    meta = ort.InferenceSession(str(session.work / "ghost_model.onnx")).get_modelmeta()
    return meta.custom_metadata_map["features"].split(",")


def check_header_program(session, out):
    """score.cpp scores every track of tracks.bin, in order, into deployed.bin."""
    assert re.fullmatch(rf"{_tracks()} tracks, \d+ of them ghosts \(p > [01]\.\d{{3}}\)\n",
                        out), out
    assert (session.work / "deployed.bin").stat().st_size == _tracks() * 4


def check_friend_comparison(session, out):
    """The header's probabilities are the toolkit's to 1e-6 (the README's claim) and
    NaN on the same tracks."""
    m = re.fullmatch(r"(\d+) tracks, max difference (\S+); NaN on the same tracks: True\n", out)
    assert m, out
    assert int(m.group(1)) > 0.99 * _tracks()
    assert float(m.group(2)) <= 1e-6, out


def check_sample(session, out):
    """sample.root, FILE.root of the deployment blocks (which count its tracks)."""
    assert (session.work / "FILE.root").is_file(), out


def check_model_files(session, out):
    """The model files the deployment blocks use, in the working folder."""
    for name in ("ghost_model.onnx", "ghost_model.hpp", "ghost_model_config.pkl"):
        assert (session.work / name).is_file(), (name, out[-2000:])


def check_analysis(session, out):
    for name in ("index.html", "metrics.json", "thresholds.csv", "rejection.png"):
        assert (session.work / "plots" / name).is_file(), (name, out[-2000:])


def check_per_track_output(session, out):
    assert (session.work / "probs.root").is_file(), out


# a text found in a block -> what its output must show, beyond exit code 0
EXPECT = {
    "python make_sample.py": check_sample,
    "python training.py": check_model_files,
    "--config ghost_model_config.pkl": check_analysis,
    "--output probs.root": check_per_track_output,
    "onnxruntime as ort": check_onnxruntime_python,
    "./score tracks.bin": check_header_program,
    "AddFriend": check_friend_comparison,
}


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.id)
def test_block_runs_as_written(readme_session, block):
    result = readme_session.results[block.id]
    if block.lang in ("bash", "python"):
        out = _ran(result)
        if block.text.startswith("g++"):
            assert result.stderr == "", result.stderr  # no compiler warning
        for key, check in EXPECT.items():
            if key in block.text:
                check(readme_session, out)
    elif block.lang == "cuda":
        _ran(result["host"])  # compiled as host code: always
        if NVCC:
            _ran(result["nvcc"])
        else:
            assert result["nvcc"] is None
    elif block.lang == "cpp":
        assert (readme_session.work / block.file_name).read_text() == block.text
    elif block.lang == "text":  # console output quoted: each line as the tools print it
        printed = {_shape(line) for r in readme_session.results.values()
                   if hasattr(r, "stdout") for line in r.stdout.splitlines()}
        missing = [line for line in block.text.splitlines() if _shape(line) not in printed]
        assert missing == [], missing
    else:  # the pipeline diagram: its scripts exist, its files are what the blocks wrote
        for script in re.findall(r"\w+\.py", block.text):
            assert (Path(ROOT_DIR) / script).is_file(), script
        names = named_files(block.text)
        assert len(names) >= 10, names
        missing = [n for n in names if not (readme_session.work / n).exists()
                   and not (readme_session.data / n).exists()]
        assert missing == [], missing


# ---------------------------------------------------------------------------
# what the session does not cover: the blocks' shape, the exempt blocks, the options


def test_every_block_is_run_or_exempt():
    """No block is left out: each is of a language the session runs, or exempt; a C++
    file is compiled by a later bash block, the CUDA file names its nvcc command."""
    assert len(BLOCKS) >= 12 and len(RUN) + len(STATIC) == len(BLOCKS)
    assert sorted(exemption(b) for b in STATIC) == sorted(EXEMPT)  # none stale
    for i, block in enumerate(BLOCKS):
        assert block.lang in LANGUAGES, (block.id, block.lang)
        if block in RUN and block.lang in ("cpp", "cuda"):
            assert block.file_name, f"{block.id}: no `// NAME.cpp:` first line"
        if block in RUN and block.lang == "cpp":
            assert any(b.lang == "bash" and block.file_name in b.text
                       for b in BLOCKS[i + 1:]), f"{block.id}: never compiled"
        if block in RUN and block.lang == "cuda":
            assert re.match(rf"// {block.file_name}: nvcc .*\b{block.file_name}$",
                            block.text.splitlines()[0]), block.text.splitlines()[0]


def _help(command):
    proc = subprocess.run(command, cwd=ROOT_DIR, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _options(line):
    """The options of one command line: -x, --name (without =value)."""
    return [w.split("=")[0] for w in shlex.split(line, comments=True)
            if re.match(r"--?[A-Za-z]", w)]


def test_every_file_of_the_repository_the_readme_names_exists():
    """A test, bench or module file the README names (`tests/test_writers.py` was one
    after its tests moved) is in the repository."""
    text = (Path(ROOT_DIR) / "README.md").read_text()
    named = set(re.findall(r"`((?:tests|bench)/[\w./-]+\.(?:py|sh))", text))
    named |= {f"{m}.py" for m in re.findall(r"`(\w+)\.py`", text)}
    assert len(named) > 40
    missing = sorted(n for n in named if not (Path(ROOT_DIR) / n).exists())
    assert missing == []


def test_every_script_option_in_the_readme_exists():
    """Every `python X.py ...` line of every bash block: the script exists and its
    --help names each option (the runnable blocks run as well; this covers the
    exempt ones)."""
    lines = [line for b in BLOCKS if b.lang == "bash" for line in b.text.splitlines()
             if line.startswith("python ")]
    assert len(lines) >= 6, lines
    helps = {}
    for line in lines:
        script = shlex.split(line)[1]
        assert (Path(ROOT_DIR) / script).is_file(), line
        if script not in helps:
            helps[script] = _help([sys.executable, script, "--help"])
        unknown = [o for o in _options(line) if not re.search(rf"(^|[\s,]){o}\b", helps[script])]
        assert unknown == [], (line, unknown)


def _check_make(block):
    targets = re.findall(r"^make (\w+)", block.text, re.M)
    assert targets == ["demo", "test"], targets
    dry = _help(["make", "-n", *targets])
    assert re.search(r"make_sample\.py .*--tracks 200000", dry), dry
    assert "pytest" in dry


def _check_ray(block):
    commands = [shlex.split(line, comments=True) for line in block.text.splitlines()
                if line.startswith("ray ")]
    assert [c[:2] for c in commands] == [["ray", "start"], ["ray", "start"], ["ray", "stop"]]
    ray = Path(sys.executable).parent / "ray"
    for command in commands:
        text = _help([str(ray), command[1], "--help"])
        unknown = [o for o in _options(" ".join(command)) if o not in text]
        assert unknown == [], (command, unknown)


def _check_onnxruntime_cpp(block):
    from artifacts import INPUT_NAME, OUTPUT_NAME
    from features import features_for
    width = len(features_for("matching"))
    assert f'"{INPUT_NAME}"' in block.text and f'"{OUTPUT_NAME}"' in block.text
    assert f"std::array<float, {width}>" in block.text and f"{{1, {width}}}" in block.text
    assert '"ghost_model.onnx"' in block.text


STATIC_CHECKS = {"make demo": _check_make, "ray start --head": _check_ray,
                 "onnxruntime_cxx_api.h": _check_onnxruntime_cpp}


@pytest.mark.parametrize("block", STATIC, ids=lambda b: b.id)
def test_exempt_block_is_checked_statically(block):
    assert set(STATIC_CHECKS) == set(EXEMPT)
    STATIC_CHECKS[exemption(block)](block)


def test_readme_blocks_parser():
    text = "# A\n```bash\necho 1\n```\n## B\n```\nx_{a,b}.npy c.pkl/.json\n```\n"
    blocks = readme_blocks(text)
    assert [(b.line, b.lang, b.heading) for b in blocks] == [(2, "bash", "A"), (6, "", "B")]
    assert named_files(blocks[1].text) == ["x_a.npy", "x_b.npy", "c.pkl", "c.json"]
    assert expand_braces("{a,b}{1,2}") == ["a1", "a2", "b1", "b2"]
