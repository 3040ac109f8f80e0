"""One command's run on a Ray cluster of its own on this machine, as one process tree
(so bench.scale measures the cluster's memory with the run's):

    python -m bench.cluster_run CPUS inference.py -f 'parts/*.root' ... --address

starts `ray start --head --block` on a free port with CPUS cores, runs the command
with the cluster's address appended (HOST:PORT after its last `--address`), and
stops that cluster again (its processes only: `ray stop` would stop every Ray of
the machine).  Exits with the command's code.
"""
import os
import signal
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    cpus, command = sys.argv[1], sys.argv[2:]
    port = free_port()
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}",
                             f"--num-cpus={cpus}", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(2)  # the head's other services after its GCS port answers
        code = subprocess.run([sys.executable, *command, f"127.0.0.1:{port}"], env=env).returncode
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head's session: its processes only
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
    sys.exit(code)


if __name__ == "__main__":
    main()
