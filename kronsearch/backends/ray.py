"""Ray backend: this process keeps the Optuna study; Ray only executes trials.

How a trial runs
- The driver (this process) is the only one that talks to Optuna. It asks the study for a trial,
  samples its pattern (strategies.suggest), dedupes it against complete trials (and against trials it
  is still running: a twin waits for its leader's result instead of training again), and submits
  trial.run_trial as a Ray task. When the task returns, the driver reports the per-epoch val accuracies
  as intermediate values, records the same user attrs as the local backend (kind, worker, metrics,
  config, artifact_dir; plus ray_worker, the host:pid that trained it) and tells the study. The worker
  writes the trial's full per-epoch history to its artifact folder (history.json), as locally.
  At most backend.max_concurrent trials are in flight; the budget is the local backend's
  (backends.base.Budget: finished trials plus trials running in live processes on this host).
- Each task reserves backend.resources_per_trial {cpu, gpu}, and torch in it uses int(cpu) threads.
  Ray sets CUDA_VISIBLE_DEVICES for a task with gpu > 0, so a trial sees only its own GPU(s), numbered
  from 0, and train.device "auto" (or "cuda") uses them. A fractional gpu (e.g. 0.5) packs several
  trials on one GPU, but they share its memory: nothing enforces a split, and a trial that does not fit
  fails with "out of memory". Above 1, gpu must be a whole number. With gpu 0 a trial never touches a GPU
  (Ray >= 2.50 no longer hides GPUs from such tasks, so the worker forces device "cpu" itself).
- Trials are not pruned: they run to completion on the workers. Their intermediate values are still
  stored, so the study looks like a local one (and local runs sharing it prune against them).

Failures
- An exception in the trial that is a trial failure (diverged, out of memory, CUDA error; see
  backends.base.trial_failure) makes it FAIL with that fail_reason; the search goes on. It is not retried.
- A worker that dies (segfault, the kernel's OOM killer, a lost node) is retried by Ray up to
  backend.max_retries times; after that the trial FAILs with fail_reason "worker died: ...".
- Any other exception in a trial is a bug: its traceback is printed, the trial FAILs with
  fail_reason "error: ...", and the search goes on.
- A StorageError in a worker (its trial's artifacts cannot be written: full disk, unwritable folder)
  stops the search, as in the local backend.
- Ctrl-C (or an error in the driver itself): in-flight tasks are cancelled (ray.cancel: the task gets a
  KeyboardInterrupt; Ray also stops a job's tasks when its driver disconnects), their trials FAIL with
  user attr "interrupted" (as the local backend marks them; not counted against the budget) and
  their params are enqueued again (retry_of), the local Ray is shut down and the exception is
  re-raised. Re-running the same command resumes with the re-queued configurations.

Clusters
- backend.address null: start a new local Ray on this machine (even if RAY_ADDRESS is set) with
  os.cpu_count() CPUs and every GPU, no dashboard, temp and log files in <system temp
  dir>/kronsearch-ray, token auth off unless RAY_AUTH_MODE says otherwise; it is shut down, and its
  session folder there deleted, when the stage ends (a hybrid search starts it once per stage).
  "auto": join the cluster started with `ray start` on this machine; "ray://host:port": join a
  remote cluster through Ray Client. A cluster that was joined is left running (the driver only
  disconnects). If this process is already connected to Ray
  (ray.is_initialized()), that connection is used and left open.
- Every node needs kronsearch (same version) and the dataset at the space's data.root.

Storage
- Only the driver writes the Optuna storage; workers write only their own trial's artifact files
  (studies/<search>/<strategy>/trial-<n>/). So the default SQLite file is fine on one machine.
- Multi-node: the artifact folder must be on a filesystem every node mounts at the same path (run the
  driver from a shared directory, e.g. NFS), or set search.save_weights false so workers write
  nothing. When several drivers share one study, store it in PostgreSQL
  (--storage postgresql://...) rather than SQLite: SQLite serializes every write through one file
  lock, and its locking is unreliable on network filesystems.

Test hook: KRONSEARCH_TEST_CRASH_TRIAL="<search name>:<trial number>:<file>" in the environment Ray's
workers start with makes every attempt at that trial append a line to <file> and kill its worker
(os._exit), as a segfault would. It is read only in the worker (_crash_hook) and exists for the tests.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import ray
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.markup import escape

from kronsearch import record
from kronsearch.backends.base import Backend, Budget, describe, finish_trial, start_trial, trial_artifact_dir, trial_failure
from kronsearch.space import Space, SpaceError
from kronsearch.storage import StorageError, study_artifacts_dir
from kronsearch.study import worker_id
from kronsearch.trial_run import TrialSpec, run_trial

TEMP_DIR = Path(tempfile.gettempdir()) / "kronsearch-ray"  # short: Ray's socket paths must fit in 107 bytes
CRASH_HOOK_ENV = "KRONSEARCH_TEST_CRASH_TRIAL"
WAIT_SECONDS = 1.0  # ray.wait slice, so Ctrl-C is noticed promptly


def _crash_hook(search: str, number: int) -> None:
    """Test-only: kill this worker process when CRASH_HOOK_ENV names this trial (see the module doc)."""
    value = os.environ.get(CRASH_HOOK_ENV)
    if not value:
        return
    name, number_text, log = value.split(":", 2)
    if name == search and number_text == str(number):
        with open(log, "a", encoding="utf-8") as file:
            file.write(f"{os.getpid()}\n")
        os._exit(1)


@ray.remote
def _train(space: Space, spec: TrialSpec, artifact_dir: str | None, number: int, cpus: float,
           gpus: float) -> tuple[dict, list[dict], str]:
    """One trial in a Ray worker: (metrics, per-epoch history, host:pid of the worker)."""
    _crash_hook(space.name, number)
    torch.set_num_threads(max(1, int(cpus)))
    if gpus == 0 and space.train["device"] == "auto" and torch.cuda.is_available():
        space = dataclasses.replace(space, train={**space.train, "device": "cpu"})
    metrics, history = run_trial(space, spec, artifact_dir, on_epoch=None, progress=False)
    return metrics, history, worker_id()


def check_resources(space: Space) -> None:
    """Resources and device settings that cannot work on Ray, as SpaceErrors (before starting Ray)."""
    gpu = space.backend["resources_per_trial"]["gpu"]
    device = space.train["device"]
    key = f"{space.path}: backend.resources_per_trial.gpu"
    if gpu > 1 and gpu != int(gpu):
        raise SpaceError(f"{key}: Ray gives a trial a fraction of one GPU or whole GPUs; got {gpu:g}")
    if device.startswith("cuda") and gpu == 0:
        raise SpaceError(f"{key}: train.device is {device!r} but trials reserve no GPU; set gpu > 0 "
                         f"(e.g. 1, or 0.5 to put two trials on a GPU) or use device auto")
    if device.startswith("cuda:") and device != "cuda:0":
        raise SpaceError(f"{space.path}: train.device: {device!r} does not exist in a Ray trial, which sees only "
                         f"its own GPU(s) numbered from 0; use auto or cuda")


def check_cluster(space: Space, own: bool, console: Console) -> None:
    """Fail (own local Ray) or warn (a joined cluster may autoscale) when no node fits one trial."""
    cpu, gpu = (space.backend["resources_per_trial"][k] for k in ("cpu", "gpu"))
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no nodes"
    message = (f"{space.path}: backend.resources_per_trial: a trial needs {cpu:g} CPUs and {gpu:g} GPUs, "
               f"which no node of the Ray cluster has ({have})")
    if own:
        raise SpaceError(message)
    console.print(f"warning: {escape(message)}; trials wait until the cluster gets such a node")


@contextmanager
def ray_session(address: str | None) -> Iterator[bool]:
    """Connect to Ray for the duration; yields True when this call started a local Ray (and stops it after)."""
    if ray.is_initialized():
        yield False
        return
    session = None
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 would write a token to ~/.ray
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=str(TEMP_DIR),
                 logging_level=logging.WARNING)
        session = TEMP_DIR / ray.get_runtime_context().get_session_name()
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    try:
        yield address is None
    finally:
        ray.shutdown()  # stops a local Ray; only disconnects from a joined cluster
        if session is not None:
            remove_session(session)


def remove_session(session: Path) -> None:
    """Delete the session folder (logs, sockets, spilled objects) of a local Ray this process stopped, and
    session_latest if it points there; other sessions in TEMP_DIR (other runs' Rays) are left alone."""
    latest = session.parent / "session_latest"
    if latest.is_symlink() and Path(os.readlink(latest)).name == session.name:
        latest.unlink(missing_ok=True)
    for _ in range(3):  # a stopping daemon may still write a last log line
        shutil.rmtree(session, ignore_errors=True)
        if not session.exists():
            return
        time.sleep(0.2)


@dataclass
class _InFlight:
    """A submitted trial and the twins (same params, asked meanwhile) waiting for its result."""

    trial: optuna.Trial
    spec: TrialSpec
    artifact_dir: Path | None
    twins: list[optuna.Trial] = field(default_factory=list)


class _RayRun:
    """The ask -> submit -> wait -> tell loop of one stage."""

    def __init__(self, study: optuna.Study, space: Space, kind: str, budget: Budget, console: Console) -> None:
        self.study, self.space, self.kind, self.budget, self.console = study, space, kind, budget, console
        self.folder = study_artifacts_dir(study)
        self.single = len(space.search["objectives"]) == 1
        backend = space.backend
        self.cpu, self.gpu = backend["resources_per_trial"]["cpu"], backend["resources_per_trial"]["gpu"]
        self.max_concurrent, self.max_retries = backend["max_concurrent"], backend["max_retries"]
        timeout = space.search["timeout"]
        self.deadline = time.monotonic() + timeout if timeout else None
        self.space_ref = ray.put(space)
        self.running: dict[ray.ObjectRef, _InFlight] = {}
        self.asked: optuna.Trial | None = None  # asked, not yet submitted nor told

    def run(self) -> None:
        try:
            self.fill()
            while self.running:
                done, _ = ray.wait(list(self.running), num_returns=1, timeout=WAIT_SECONDS)
                for ref in done:
                    self.collect(ref)
                self.fill()
        except BaseException as err:
            self.abandon("stopped by Ctrl-C (SIGINT)" if isinstance(err, KeyboardInterrupt)
                         else str(err) if isinstance(err, StorageError) else f"driver error: {type(err).__name__}: {err}")
            raise

    def fill(self) -> None:
        """Start trials until max_concurrent are running, the budget is claimed or the timeout passed.

        The budget counts like the local backend's: finished trials plus trials running in live
        processes on this host (this one's in-flight trials and twins included).
        """
        while (len(self.running) < self.max_concurrent
               and (self.deadline is None or time.monotonic() < self.deadline)
               and self.budget.claimed(self.study) < self.budget.target):
            trial = self.asked = self.study.ask()
            started = start_trial(trial, self.space, self.kind, self.budget)
            if started.skipped:  # another process took the last slot meanwhile
                self.tell(trial)
                self.asked = None
                return
            leader = next((job for job in self.running.values() if job.trial.params == trial.params), None)
            if started.duplicate_values is not None:
                self.tell(trial, started.duplicate_values)
            elif leader is not None:
                leader.twins.append(trial)
            else:
                self.submit(trial, started.spec)
            self.asked = None

    def submit(self, trial: optuna.Trial, spec: TrialSpec, twins: list[optuna.Trial] | None = None) -> None:
        artifact_dir = trial_artifact_dir(self.space, self.folder, trial.number)
        task = _train.options(num_cpus=self.cpu, num_gpus=self.gpu, max_retries=self.max_retries,
                              retry_exceptions=False, name=f"kronsearch trial {trial.number}")
        ref = task.remote(self.space_ref, spec, str(artifact_dir) if artifact_dir else None, trial.number,
                          self.cpu, self.gpu)
        self.running[ref] = _InFlight(trial, spec, artifact_dir, list(twins or []))

    def collect(self, ref: ray.ObjectRef) -> None:
        """Record a finished task's trial (and its twins) in the study."""
        job = self.running[ref]  # removed only once recorded: an interrupt meanwhile re-queues it
        try:
            metrics, history, executor = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # the trial raised
            cause = err.cause if isinstance(err.cause, BaseException) else err
            if isinstance(cause, StorageError):  # cannot write artifacts: stop, like the local backend
                raise cause from None
            reason = trial_failure(cause)
            if reason is None:
                loud = Console(stderr=True) if self.console.quiet else self.console  # shown even with --quiet
                loud.print(f"trial {job.trial.number}: unexpected error (a bug?):\n{escape(str(err))}")
                reason = f"error: {type(cause).__name__}: {cause}"
            frozen = self.fail(job.trial, reason)
        except ray.exceptions.RayError as err:  # its worker or node died on every attempt
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            frozen = self.fail(job.trial, f"worker died ({1 + self.max_retries} attempts): "
                                          f"{type(err).__name__}: {detail}")
        else:
            if self.single:
                for epoch in history:
                    job.trial.report(epoch["val_accuracy"], epoch["epoch"])
            frozen = self.tell(job.trial, finish_trial(job.trial, self.space, job.spec, metrics, job.artifact_dir,
                                                       ray_worker=executor))
        if frozen.state == TrialState.COMPLETE:
            for twin in job.twins:
                self.tell(twin, record.copy_duplicate(twin, frozen))
        elif job.twins:  # like the local backend, a twin of a failed trial trains itself
            self.submit(job.twins[0], job.spec, job.twins[1:])
        del self.running[ref]

    def tell(self, trial: optuna.Trial, values: list[float] | None = None) -> FrozenTrial:
        frozen = self.study.tell(trial, values, state=TrialState.COMPLETE if values is not None else TrialState.FAIL)
        self.console.print(escape(describe(frozen)))
        return frozen

    def fail(self, trial: optuna.Trial, reason: str) -> FrozenTrial:
        record.fail(trial, reason)
        return self.tell(trial)

    def abandon(self, why: str) -> None:
        """Cancel in-flight tasks; their trials (and one asked but not started) FAIL and are re-queued."""
        for ref in self.running:
            try:
                ray.cancel(ref)  # raises KeyboardInterrupt in the task; the worker process stays usable
            except Exception:  # noqa: BLE001 - Ray may already be gone; the trials are re-queued regardless
                pass
        trials = [t for job in self.running.values() for t in (job.trial, *job.twins)]
        trials += [self.asked] if self.asked is not None else []
        self.running.clear()
        for trial in trials:
            try:
                requeue_interrupted(self.study, trial, why)
            except Exception:  # noqa: BLE001 - e.g. the storage failed; recover_dead_trials re-queues on resume
                continue
            self.console.print(f"trial {trial.number} interrupted: its configuration is queued again")


def requeue_interrupted(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    """FAIL a trial that was cut off, as the local backend does (record.interrupt: not counted against
    the budget), and enqueue its params again (record.requeue), as study.recover_dead_trials would on
    the next run. A trial already finished is left alone.
    """
    if study._storage.get_trial(trial._trial_id).state.is_finished():  # noqa: SLF001 - this study's storage
        return
    record.interrupt(trial, why)
    record.requeue(study, study.tell(trial, state=TrialState.FAIL))


class RayBackend(Backend):
    """Trials as Ray tasks, this process keeping the study (see the module doc)."""

    name = "ray"

    def run(self, study: optuna.Study, space: Space, kind: str, budget: Budget, progress: bool,
            console: Console) -> None:
        if budget.remaining(study) == 0:
            return
        check_resources(space)
        with ray_session(space.backend["address"]) as own:
            check_cluster(space, own, console)
            total = ray.cluster_resources()
            console.print(f"ray: {'local' if own else 'cluster'} with {total.get('CPU', 0):g} CPUs, "
                          f"{total.get('GPU', 0):g} GPUs; up to {space.backend['max_concurrent']} trials at a time, "
                          f"each {space.backend['resources_per_trial']['cpu']:g} CPU, "
                          f"{space.backend['resources_per_trial']['gpu']:g} GPU")
            _RayRun(study, space, kind, budget, console).run()
