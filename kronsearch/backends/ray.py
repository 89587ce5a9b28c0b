"""Ray backend: trials run through Ray Tune on a Ray cluster; this process keeps the Optuna study.

How a trial runs (kronsearch.backends.tune)
- The driver (this process) is the only one that talks to Optuna. Tune asks a StudySearcher for each
  trial: it asks the study, samples the pattern, and tells duplicates and twins (same params as a trial
  still running: they take its outcome) without training. The trial runs trial_run.run_trial as a Tune
  function on a worker and reports each epoch's val accuracy through tune.report; the StudyScheduler
  reports it to Optuna and asks the study's pruner, which stops the trial mid-run (PRUNED, with
  fail_reason "pruned after epoch N"). The final metrics come back as the last report; the driver records
  them as the local backend does (plus ray_worker, the host:pid that trained). At most
  backend.max_concurrent trials run at once; the budget is the local backend's (backends.base.Budget).
- Each trial reserves backend.resources_per_trial {cpu, gpu}, and torch in it uses int(cpu) threads.
  Ray sets CUDA_VISIBLE_DEVICES for a trial with gpu > 0, so a trial sees only its own GPU(s), numbered
  from 0, and train.device "auto" (or "cuda") uses them. A fractional gpu (e.g. 0.5) packs several
  trials on one GPU, but they share its memory. With gpu 0 a trial never touches a GPU.
- backend.callbacks: "package.module:function" references to functions returning ray.tune.Callback
  objects (loggers included), attached to the Tuner.

Failures
- A trial failure (diverged, out of memory, CUDA error; backends.base.trial_failure) FAILs with that
  fail_reason and is not retried; the search goes on.
- A worker that dies (segfault, the OOM killer, a lost node) or a trial that raises anything else is
  retried by Tune (FailureConfig) up to backend.max_retries times; then the trial FAILs with fail_reason
  "worker died (N attempts): ..." or "error (N attempts): ...".
- A StorageError in a trial (its artifacts cannot be written) stops the search, as in the local backend.
- The raylet dies (kill -9, the OOM killer): Ray ends this process natively, with no Python clean-up; the
  watcher beside it (kronsearch.backends.ray_watch) marks its trials interrupted, removes the session
  folder and prints one `error:` line.
- Ctrl-C, the search timeout or an error in the driver: Tune stops the running trials; their trials FAIL
  with user attr "interrupted" and their params are enqueued again (retry_of); Ctrl-C is re-raised.
  Re-running the same command resumes.

Sessions: one per `kronsearch run` (a hybrid's two stages share it)
- backend.address null: a new local Ray on this machine (even if RAY_ADDRESS is set) with
  os.cpu_count() CPUs and every GPU, no dashboard, token auth off unless RAY_AUTH_MODE says otherwise.
  Its session folder and Tune's trial folders are in one short private folder (backends.ray_folders),
  removed when the run ends (backend.keep_session: true keeps it and prints where). "auto": join the
  cluster `ray start` started on this machine; "ray://host:port": a remote cluster through Ray Client.
  A joined cluster is left running; only Tune's folder is removed. If this process is already connected
  to Ray (ray.is_initialized()), that connection is used and left open.
- Every node needs kronsearch (same version), the dataset at data.root and any factory module; a local
  Ray's workers get the driver's folder on PYTHONPATH.

Storage
- Only the driver writes the Optuna storage; workers write only their own trial's artifact files.
  Multi-node: the artifact folder must be on a filesystem every node mounts at the same path, or set
  search.save_weights false. Several drivers sharing one study should use PostgreSQL.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before ray is imported: Ray 2.60 would write ~/.ray
import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402

from kronsearch.backends.base import Backend, Budget  # noqa: E402
from kronsearch.backends.ray_folders import (  # noqa: E402
    new_session_folder,
    private_folder,
    remove_session,
    session_root,
    sweep_dead_sessions,
)
from kronsearch.backends.ray_stop import StopDeadline  # noqa: E402
from kronsearch.backends.ray_watch import DriverWatch  # noqa: E402
from kronsearch.backends.tune import StudyScheduler, StudySearcher, run_tune_trial  # noqa: E402
from kronsearch.errors import STOPPED_BY_CTRL_C, STOPPED_BY_SIGTERM, BadInput, RunFailure, Terminated  # noqa: E402
from kronsearch.references import call_user_code  # noqa: E402
from kronsearch.space import Space, SpaceError  # noqa: E402
from kronsearch.storage import StorageError, study_storage_url  # noqa: E402
from kronsearch.study import Heartbeats  # noqa: E402
from kronsearch.study_files import study_folder  # noqa: E402

QUIET_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0", "RAY_CHDIR_TO_TRIAL_DIR": "0"}
ADDRESS_TIMEOUT = 10.0  # seconds: how long backend.address may take to answer


def user_callbacks(references: list[str]) -> list[tune.Callback]:
    """The Tune callbacks backend.callbacks make; BadInput naming the key for one that fails or makes no Callback."""
    made = []
    for i, reference in enumerate(references):
        callback = call_user_code(reference, f"backend.callbacks[{i}]")
        if not isinstance(callback, tune.Callback):
            raise BadInput(f"backend.callbacks[{i}] {reference!r} returned a {type(callback).__name__}, not a "
                           f"ray.tune.Callback")
        made.append(callback)
    return made


def callback_error(err: BaseException | None, callbacks: list[tune.Callback],
                   references: list[str]) -> BadInput | None:
    """A BadInput naming the backend.callbacks entry whose hook raised `err` inside fit(), or None. (Tune wraps the
    error in a TuneError whose text is a whole traceback: a 1,154-character `error:` line that named no key.)"""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for frame, _ in traceback.walk_tb(err.__traceback__):
            owner = frame.f_locals.get("self")
            index = next((i for i, callback in enumerate(callbacks) if owner is callback), None)
            if index is not None:
                text = " ".join(str(err).split())[:500]
                return BadInput(f"backend.callbacks[{index}] {references[index]!r}: its {frame.f_code.co_name} "
                                f"raised {type(err).__name__}{': ' + text if text else ''}")
        err = err.__cause__ or err.__context__
    return None


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


def trials_in_flight(backend: dict, total: dict[str, float]) -> tuple[int, str]:
    """How many trials run at once, and why: backend.max_concurrent when set, else as many as the cluster's
    CPUs and GPUs (`total`, ray.cluster_resources()) hold at backend.resources_per_trial, at least 1."""
    if backend["max_concurrent"] is not None:
        return backend["max_concurrent"], "backend.max_concurrent"
    need = backend["resources_per_trial"]
    fits = {key: int(total.get(key.upper(), 0) / need[key] + 1e-9) for key in ("cpu", "gpu") if need[key] > 0}
    if not fits:
        return 1, "max_concurrent not set and a trial reserves no CPU or GPU: one at a time"
    limit = min(fits, key=fits.__getitem__)
    count = max(1, fits[limit])
    return count, (f"max_concurrent not set: {total.get(limit.upper(), 0):g} {limit.upper()}s / {need[limit]:g} per "
                   f"trial")


def check_address(address: str, timeout: float = ADDRESS_TIMEOUT) -> None:
    """Fail within `timeout` seconds when nothing answers at backend.address (ray.init would retry for minutes),
    or when a ray:// address finds no Ray Client installed; "auto" is Ray's own quick lookup."""
    if address == "auto":
        return
    key = f"backend.address {address!r}"
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise BadInput(f"{key}: Ray Client (ray://) needs the ray[client] extra, not installed here: "
                       f"pip install 'ray[client]=={ray.__version__}'")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        host, port = address.removeprefix("ray://"), "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as connection:
            grpc = os.environ.get("RAY_USE_TLS", "0") in ("0", "") and speaks_grpc(connection)
    except OSError as err:
        raise RunFailure(f"{key}: nothing answers at {host}:{port} within {timeout:g} s ({err.strerror or err}); "
                         f"start the cluster (ray start --head) or fix the address") from None
    if grpc is False:
        raise RunFailure(f"{key}: {host}:{port} answers but is not a Ray cluster (no gRPC server: Ray's GCS, "
                         f"default port 6379, or its Ray Client server, ray://host:10001); fix the address")


HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # preface, empty SETTINGS


def speaks_grpc(connection: socket.socket) -> bool:
    """Whether the server on `connection` answers an HTTP/2 greeting with a SETTINGS frame, as every gRPC server
    (Ray's GCS and Ray Client server) does at once; something else on the port made ray.init retry for minutes.
    (With RAY_USE_TLS the server speaks TLS first, and this check is skipped.)"""
    connection.sendall(HTTP2_HELLO)
    reply = b""
    while len(reply) < 4:
        chunk = connection.recv(9 - len(reply))
        if not chunk:
            return False
        reply += chunk
    return reply[3] == 4  # the frame type of the server's first frame


TERMINATED = threading.Event()  # SIGTERM arrived during this process's Ray session
_INITIALIZING = threading.Event()  # ray.init runs: a SIGTERM waits until it returns
_OUTSIDE_SIGINT: list = []  # the SIGINT handler outside fit() (Tune installs its own while fit() runs)


def _on_sigterm(started: Callable[[], None], signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: Tune's own SIGINT handler when fit() runs (it ends fit, and run raises Terminated), else
    Terminated at once (after ray.init returns, when it lands during it). `started()` first (a StopDeadline)."""
    TERMINATED.set()
    started()
    if _INITIALIZING.is_set():
        return
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler) or handler is signal.default_int_handler or handler in _OUTSIDE_SIGINT:
        raise Terminated()
    handler(signal.SIGINT, frame)


@contextmanager
def _sigterm_held() -> Iterator[None]:
    """ray.init with this process's SIGTERM handler kept, and a SIGTERM held until it returns (then Terminated, and
    the session is shut down as after any SIGTERM). ray.init installs Python SIGTERM handlers that exit 15 or 1
    with no line, and the driver's C++ core worker a handler that printed a stack and aborted (exit 134, the
    session folder left behind): neither is installed in the driver; Ray's workers keep theirs."""
    utils, constants = ray._private.utils, ray._private.ray_constants
    installer, native = utils.set_sigterm_handler, constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    utils.set_sigterm_handler = lambda handler: None
    constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True  # read as ray.init makes the driver's core worker
    _INITIALIZING.set()
    try:
        yield
    finally:
        _INITIALIZING.clear()
        utils.set_sigterm_handler, constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = installer, native
    if TERMINATED.is_set():
        raise Terminated()


@contextmanager
def ray_session(address: str | None, folder: Path, on_sigterm: Callable[[], None] = lambda: None) -> Iterator[bool]:
    """Connect to Ray for the duration; yields True when this call started a local Ray (and stops it after).
    A SIGTERM meanwhile calls `on_sigterm` and stops the run as Ctrl-C does (Terminated)."""
    if ray.is_initialized():
        yield False
        return
    TERMINATED.clear()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, on_sigterm)) if main else None
    _OUTSIDE_SIGINT[:] = [signal.getsignal(signal.SIGINT)]
    try:
        with _sigterm_held():
            if address is None:
                path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                         _temp_dir=str(folder / "ray"), logging_level=logging.WARNING,
                         runtime_env={"env_vars": {"PYTHONPATH": path}})
            else:
                check_address(address)
                ray.init(address=address, logging_level=logging.WARNING)
        yield address is None
    finally:
        ray.shutdown()  # stops a local Ray (also one that ray.init left half started); only disconnects from a cluster
        if main:
            signal.signal(signal.SIGTERM, previous)


def _stopped_by() -> str:
    return STOPPED_BY_SIGTERM if TERMINATED.is_set() else STOPPED_BY_CTRL_C


class RayBackend(Backend):
    """Trials through Ray Tune, this process keeping the study (see the module doc)."""

    name = "ray"

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.watch: DriverWatch | None = None
        self.searcher: StudySearcher | None = None  # the stage running now
        self.concurrent = 1  # trials in flight (trials_in_flight), set when the session starts

    @contextmanager
    def session(self, space: Space, console: Console) -> Iterator[None]:
        """One Ray session (and one folder for it and Tune) for every stage of the run."""
        check_resources(space)
        root = private_folder(session_root())
        sweep_dead_sessions(root)
        self.folder = new_session_folder(root, space.backend["keep_session"])
        keep = space.backend["keep_session"]
        watch = self.watch = DriverWatch(self.folder, keep)  # if Ray ends this process natively

        def abandon(why: str) -> list[int]:
            return [] if self.searcher is None else self._abandon(self.searcher, why, console)

        deadline = StopDeadline(abandon, lambda: self._release(keep, console), _stopped_by)

        def on_sigterm() -> None:
            deadline.start()
            watch.terminated()

        try:
            with ray_session(space.backend["address"], self.folder, on_sigterm) as own:
                deadline.node = ray._private.worker._global_node if own else None
                check_cluster(space, own, console)
                total = ray.cluster_resources()
                self.concurrent, why = trials_in_flight(space.backend, total)
                concurrent = self.concurrent
                console.print(f"ray: {'local' if own else 'cluster'} with {total.get('CPU', 0):g} CPUs, "
                              f"{total.get('GPU', 0):g} GPUs; up to {concurrent} "
                              f"trial{'s' if concurrent > 1 else ''} at a time ({why}), "
                              f"each {space.backend['resources_per_trial']['cpu']:g} CPU, "
                              f"{space.backend['resources_per_trial']['gpu']:g} GPU")
                with deadline.raylet_watched():
                    yield
        finally:
            self._release(keep, console)
            deadline.done()

    def _release(self, keep: bool, console: Console) -> None:
        """The session folder removed (or said where it is kept); the watcher told the session ended."""
        assert self.folder is not None and self.watch is not None  # set when session() began
        if keep:
            console.print(f"ray: the session's logs and Tune's trial folders are kept in {self.folder}")
        else:
            remove_session(self.folder)
        self.watch.done()

    def run(self, study: optuna.Study, space: Space, kind: str, budget: Budget, progress: bool,
            console: Console) -> None:
        remaining = budget.remaining(study)
        if remaining == 0 or budget.timed_out():
            return
        assert self.watch is not None and self.folder is not None  # set by session(), which run() is called in
        url = study_storage_url(study)
        if url is not None:
            self.watch.watch(url, study.study_name)
        backend = space.backend
        timeout = budget.time_left()
        folder = study_folder(study, create=space.search["save_weights"])  # checked: no link on the way
        searcher = self.searcher = StudySearcher(study, space, kind, budget, folder, console, budget.deadline, progress)
        scheduler = StudyScheduler(searcher, attempts=1 + backend["max_retries"])
        resources = {"cpu": backend["resources_per_trial"]["cpu"], "gpu": backend["resources_per_trial"]["gpu"]}

        def trial(config: dict) -> None:
            """The space travels in the function (2 KB pickled), not by `tune.with_parameters`, which put it in
            the raylet's store: when a SIGTERM to the process group stopped the raylet, the driver tried to
            recover that object, found the store's pipe broken and Ray ended it natively (exit 1, not 143): 2 of
            10 runs of a stress loop, 0 of 20 since. A raylet's death is the StopDeadline's to handle."""
            run_tune_trial(config, space)

        tuner = tune.Tuner(
            tune.with_resources(trial, resources),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                        max_concurrent_trials=self.concurrent, reuse_actors=True,
                                        time_budget_s=timeout),
            run_config=tune.RunConfig(name=f"{space.name}-{kind}", storage_path=str(self.folder / "tune"),
                                      verbose=0, callbacks=(callbacks := user_callbacks(backend["callbacks"])),
                                      failure_config=tune.FailureConfig(max_failures=backend["max_retries"])))
        saved = {key: os.environ.get(key) for key in QUIET_ENV}
        os.environ.update(QUIET_ENV)
        for logger in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis"):  # a stopped trial has no results
            logging.getLogger(logger).setLevel(logging.ERROR)
        try:
            with Heartbeats(study, lambda: [t for job in searcher.running.values() for t in (job.trial, *job.twins)]):
                tuner.fit()
        except BaseException as err:
            failed = callback_error(err, callbacks, backend["callbacks"])
            why = _stopped_by() if isinstance(err, KeyboardInterrupt) else f"driver error: {failed or err}"
            self._abandon(searcher, why, console)
            if failed is not None:
                raise failed from None
            raise
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if searcher.storage_error is not None:
            self._abandon(searcher, searcher.storage_error, console)
            raise StorageError(searcher.storage_error)
        timed_out = searcher.deadline is not None and time.monotonic() >= searcher.deadline
        if self._abandon(searcher, "stopped by the timeout" if timed_out else _stopped_by(), console) and not timed_out:
            raise Terminated() if TERMINATED.is_set() else KeyboardInterrupt()  # fit() returns normally on Ctrl-C

    @staticmethod
    def _abandon(searcher: StudySearcher, why: str, console: Console) -> list[int]:
        numbers = searcher.abandon(why)
        for number in numbers:
            console.print(escape(f"trial {number} interrupted: its configuration is queued again"))
        return numbers
