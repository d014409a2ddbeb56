"""A real single-node SLURM cluster for tests: munged, slurmctld and slurmd started from a temp dir.

Why: the SLURM profile (profiles/slurm) can only be trusted if Snakemake's SLURM executor really
submits through sbatch and reads states back from squeue. Debian's slurm-wlm 22.05 + munge run as
root in seconds with everything (key, socket, state, spool, pid files, logs) under a temp dir, so a
test leaves nothing behind in /etc, /run or /var and does not touch a munged/slurmd already running.

Use it as a context manager:

    with LocalSlurm(tmp_path) as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env(), check=True)

Clients (sbatch, squeue, scancel, sinfo, and the Snakemake SLURM plugin, which calls them) find the
cluster through SLURM_CONF, which env() sets. When the machine cannot host the cluster (not root,
binaries missing) the constructor calls pytest.skip with the reason.
"""

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "sinfo", "scontrol")

# squeue keeps finished jobs for MinJobAge seconds. With accounting off there is no sacct, so the
# SLURM plugin's status command is squeue and a job that left squeue before the plugin polled it
# would never be reported as finished, and the tests read every job of a run back from squeue at its end.
# Two hours outlasts the slowest tiny run on a loaded machine (the plugin's status interval is at most 180 s).
MIN_JOB_AGE_S = 7200
# Stand-ins for the test node's GPU device files (see _write_files)
GPU_DEVICE_FILES = ("/dev/null", "/dev/zero")
N_GPUS = len(GPU_DEVICE_FILES)


def _free_port():
    """A TCP port that was free a moment ago (the kernel picks it; small race, acceptable in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _machine_memory_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("MemTotal not found in /proc/meminfo; cannot size the test SLURM node")


def skip_reason():
    """Why this machine cannot host the test cluster, or None when it can."""
    if os.geteuid() != 0:
        return "LocalSlurm needs root (slurmd runs jobs as the submitting user and must be root)"
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None]
    if missing:
        return (f"SLURM/munge binaries missing: {', '.join(missing)}; "
                "install them with .ci/install_apt.sh (Debian packages slurm-wlm, munge)")
    return None


class LocalSlurm:
    """Start/stop a one-node SLURM cluster (partitions `cpu` (default) and `gpu`) under `tmpdir`."""

    def __init__(self, tmpdir, startup_timeout_s=60, stop_timeout_s=15):
        reason = skip_reason()
        if reason:
            pytest.skip(reason)
        self.root = Path(tmpdir).resolve() / "slurm"
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.node = socket.gethostname().split(".")[0]  # what `hostname -s` prints; slurmd checks it
        self.conf_path = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs = {}  # daemon name -> Popen, in start order; stop() kills exactly these
        self._logs = []

    # -- public API ------------------------------------------------------------------------------

    def env(self):
        """Environment for client subprocesses (sbatch, squeue, snakemake): SLURM_CONF set, no
        inherited SLURM_* job variables (they would make the plugin think it runs inside a job)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf_path)
        # Jobs inherit this environment (sbatch --export=ALL); see _write_srun_shim for why the
        # shim directory goes first on PATH.
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env

    def run(self, *args, check=True):
        """Run a SLURM client command against this cluster; returns its stdout."""
        proc = subprocess.run(list(args), env=self.env(), capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def jobs(self):
        """All jobs slurmctld still remembers (finished ones too, for MinJobAge s), as dicts with
        id, name, comment (the Snakemake plugin writes rule_<rule>[_wildcards_<wc>]), partition, state,
        memory (the request, e.g. 100M) and tres (the GPUs asked for, e.g. gres:gpu:1; N/A for none)."""
        out = self.run("squeue", "--states=all", "--noheader",
                       "--Format=JobArrayID:|,Name:|,Comment:|,Partition:|,State:|,MinMemory:|,tres-per-job:")
        rows = []
        for line in out.splitlines():
            fields = [f.strip() for f in line.split("|")]
            rows.append(dict(zip(("id", "name", "comment", "partition", "state", "memory", "tres"), fields)))
        return rows

    def start(self):
        try:
            self._write_files()
            self._start_munged()
            self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf_path)])
            self._start("slurmd", ["slurmd", "-D", "-f", str(self.conf_path), "-N", self.node])
            self._wait_until_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Cancel remaining jobs, then stop the daemons this object started (reverse order), by pid:
        SIGTERM, and SIGKILL after stop_timeout_s."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            # Without this a running job's slurmstepd would outlive slurmd.
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.monotonic() + self.stop_timeout_s
            while time.monotonic() < deadline and any(
                    j["state"] in ("RUNNING", "COMPLETING", "PENDING") for j in self._jobs_or_empty()):
                time.sleep(0.5)
        self._kill_escaped_job_processes()
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("%s (pid %d) ignored SIGTERM; sending SIGKILL", name, proc.pid)
                    proc.kill()
                    proc.wait(timeout=self.stop_timeout_s)
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def _kill_escaped_job_processes(self):
        """SIGKILL job processes that outlived their job. proctrack/linuxproc (the only tracker that needs no
        cgroup set-up) finds a job's processes by parentage, so a process orphaned when scancel killed its parent
        escapes it and would live on after the test. Every job process carries this cluster's SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf_path}".encode()
        daemons = {p.pid for p in self.procs.values()}
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit() or int(proc_dir.name) in daemons | {os.getpid()}:
                continue
            try:
                if marker in (proc_dir / "environ").read_bytes().split(b"\0"):
                    os.kill(int(proc_dir.name), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                pass  # gone meanwhile, or not ours to read

    def log_tail(self, n_lines=40):
        """The end of each daemon's log, for assertion messages."""
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-n_lines:]
            parts.append(f"== {path.name} ==\n" + "\n".join(lines))
        return "\n".join(parts)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- internals -------------------------------------------------------------------------------

    def _write_files(self):
        for sub in ("etc", "munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses group/world-accessible key and socket directories.
        for sub in ("munge", "etc"):
            os.chmod(self.root / sub, 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)

        cpus = os.cpu_count() or 1
        # Leave room for the OS and the test processes; slurmd drains a node whose configured
        # memory exceeds what it finds.
        real_memory_mb = max(256, _machine_memory_mb() // 2)
        r = self.root
        conf = f"""\
# Generated by tests/slurm_cluster.py for a throwaway single-node test cluster.
ClusterName=vlselecttest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge={MIN_JOB_AGE_S}
ReturnToService=2
SchedulerType=sched/backfill
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory_mb} Gres=gpu:{N_GPUS} State=UNKNOWN
PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={self.node} Default=NO MaxTime=INFINITE State=UP
"""
        self.conf_path.write_text(conf)
        # Two GPUs the scheduler grants and enforces --gpus/--gres requests against. slurm-wlm 22.05's gres/gpu
        # counts a GPU only with a device file (with Count alone slurmd reports 0 and the node is drained), so two
        # character devices every machine has stand in; no job opens them (task/none constrains no devices).
        (self.conf_path.parent / "gres.conf").write_text(
            "".join(f"NodeName={self.node} Name=gpu File={dev}\n" for dev in GPU_DEVICE_FILES))
        self._write_srun_shim()

    def _write_srun_shim(self):
        """An `srun` that restores SLURM_CONF. Inside a job, snakemake-executor-plugin-slurm-jobstep
        0.6.1 launches each rule with `srun` in an environment stripped of SLURM_* variables,
        SLURM_CONF included; a real cluster's srun then finds /etc/slurm/slurm.conf (or its
        configless copy), but this cluster's config lives only in the temp dir, and writing it to
        /etc would clash with other clusters on the machine."""
        real_srun = shutil.which("srun")
        shim = self.root / "bin" / "srun"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(f'#!/bin/sh\nSLURM_CONF="${{SLURM_CONF:-{self.conf_path}}}" exec {real_srun} "$@"\n')
        os.chmod(shim, 0o755)

    def _start_munged(self):
        m = self.root / "munge"
        self._start("munged", [
            "munged", "--foreground", "--force",
            f"--key-file={m / 'munge.key'}", f"--socket={self.munge_socket}",
            f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
        ])
        self._wait(lambda: self.munge_socket.exists(), "munged to create its socket", "munged")

    def _start(self, name, cmd):
        log = open(self.root / "log" / f"{name}.out", "w")
        self._logs.append(log)
        # Own session: a Ctrl-C in the test terminal reaches pytest, not the daemons; stop() ends them.
        self.procs[name] = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def _jobs_or_empty(self):
        try:
            return self.jobs()
        except (RuntimeError, subprocess.TimeoutExpired):
            return []

    def _node_state(self):
        proc = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%t"], env=self.env(),
                              capture_output=True, text=True, timeout=30)
        return proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.split() else None

    def _wait_until_idle(self):
        self._wait(lambda: self._node_state() == "idle", f"node {self.node} to be idle in sinfo",
                   "slurmctld", "slurmd")

    def _wait(self, condition, what, *daemons):
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            for name in daemons:
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited with {self.procs[name].returncode} while "
                                       f"waiting for {what}; logs:\n{self._all_logs()}")
            if condition():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out after {self.startup_timeout_s} s waiting for {what}; "
                           f"logs:\n{self._all_logs()}")

    def _all_logs(self):
        parts = [self.log_tail()]
        for path in sorted((self.root / "log").glob("*.out")):
            parts.append(f"== {path.name} ==\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)
