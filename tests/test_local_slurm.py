"""workflow/cluster/local-slurm.sh: a second start changes nothing, and stop ends only the daemons it started."""
import os
import subprocess

from conftest import LOCAL_SLURM


def script(state, command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LOCAL_SLURM), command], env={**os.environ, "LOCAL_SLURM_DIR": str(state)},
                          capture_output=True, text=True, timeout=600)


def test_start_on_a_running_cluster_changes_nothing(local_slurm):
    pids = {p.name: p.read_text() for p in (local_slurm / "pids").iterdir()}
    assert set(pids) == {"munged", "slurmctld", "slurmd"}
    again = script(local_slurm, "start")
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    assert {p.name: p.read_text() for p in (local_slurm / "pids").iterdir()} == pids
    status = script(local_slurm, "status")
    assert status.returncode == 0 and "idle" in status.stdout, status.stdout + status.stderr


def test_stop_leaves_alone_a_process_that_is_not_its_daemon(tmp_path):
    """A pid file whose process is no longer that daemon (it died and the pid was reused) names another
    program: stop must not signal it."""
    other = subprocess.Popen(["sleep", "600"])
    try:
        (tmp_path / "pids").mkdir()
        for name in ("munged", "slurmctld", "slurmd"):
            (tmp_path / "pids" / name).write_text(str(other.pid))
        assert script(tmp_path, "status").returncode == 3
        stop = script(tmp_path, "stop")
        assert stop.returncode == 0, stop.stderr
        assert other.poll() is None  # still running
        assert not list((tmp_path / "pids").iterdir())
    finally:
        other.kill()
        other.wait()
