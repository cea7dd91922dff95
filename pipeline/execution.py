"""Running shard tasks: on Ray (embedded local cluster or an existing one), or inline.

Design (img2dataset's, adapted to GPUs): ``workers`` long-lived actors each own a Degrader on
their device; the driver hands whole shards to them (at most two queued per actor, so the next
shard starts without a round trip but work stays spread).  One actor call = one shard = one tar
+ one stats file; retries simply redo the shard, which is safe because the bytes are a pure
function of the shard's inputs.

Storage failures are different (:class:`_Failures`, :class:`_Outage`).  A shard whose upload
or read still fails when the storage layer's attempts and deadline run out
(:class:`storage.StorageError`) has already been retried, so the driver first asks whether the
store takes a write at all (``store_probe``: one quick write):

* it does → the failure is the object's own: final for that shard (``--resume`` redoes it),
  and after ``storage_failure_limit`` such failures in a row (no shard committed in between)
  the executor stops, reporting every shard it did not finish;
* it does not → the store is down, restarting or throttling every write: the shard is not to
  blame.  The driver hands out no new shard and probes again with the storage backoff until
  the store answers, then runs the shard again — and every other shard that was in flight
  while the store was seen down.  The wait is bounded by the storage deadline (``deadline_s``),
  counted from the first unanswered probe since the last commit; a store still down after it
  stops the run with every unfinished shard reported (exit 1).

So a store that restarts, or throttles for a while, costs a pause instead of the job, and a
store that stays down still ends the job within one object's retries plus ``deadline_s``.

Measured Ray pitfalls on small machines that shape this module:

* actors that take every CPU starve other tasks and the job hangs silently → the embedded
  cluster is started with more logical CPUs than actors need, and we check that the requested
  actors fit the cluster before creating them (with a readiness timeout instead of a hang);
* a ``num_gpus=1`` actor on a CPU-only cluster waits forever → GPUs are requested only when the
  cluster reports them, and an actor that gets a GPU it cannot use falls back to CPU explicitly;
* bind to 127.0.0.1, cap the object store, use a private short ``_temp_dir``, no dashboard;
* a killed driver left the embedded cluster's agents running for over a minute and its temp
  folder forever → a watchdog and a sweep at the next start (see :mod:`pipeline.raysession`);
* worker output (a tarfile's ``__del__`` traceback after a full disk, ~30 lines per shard)
  buried the job's own messages → the CLI routes it into the log file
  (:func:`log_worker_output`).
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

from pairforge.errors import UsageError, WorkFailed

from . import raysession
from .worker import JobSpec, ShardProcessor, ShardTask

log = logging.getLogger(__name__)

OnDone = Callable[[ShardTask, dict], None]

#: persistent storage failures in a row (no shard committed in between) that stop a run
STORAGE_FAILURE_LIMIT = 2
#: how the reason of a shard that a stopped run never finished begins
NOT_RUN = "not run: "


@dataclass
class RunReport:
    done: list[str]
    failed: dict[str, str]    # shard name -> last error (never contains credentials)
    workers: list[dict]
    startup_s: float = 0.0    # creating workers (process start, imports, Degrader init)
    run_s: float = 0.0        # first shard submitted -> last shard committed


# ---------------------------------------------------------------- Ray lifecycle
_STARTED_TEMP: list[str] = []
#: the watchdog of each embedded cluster we started (see pipeline/raysession.py)
_WATCHDOGS: list = []
#: environment variables Ray's ``ray.init`` of a new local cluster changes for the whole process
RAY_SESSION_ENV = ("RAY_AUTH_MODE",)
#: their values before each embedded cluster we started, restored by :func:`shutdown_ray`
_SAVED_ENV: list[dict[str, str | None]] = []

#: Ray's own switch for single-node mode: ``0`` before ``import ray`` makes it keep 127.0.0.1
#: as the node address (the CLI sets it at its entry point; see clusters/cli.py)
RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def on_loopback(address: str | None) -> bool:
    """True when Ray must keep 127.0.0.1 as given: an embedded cluster (no ``address``), or one
    joined at a loopback address (an embedded cluster of another process) or at ``auto`` (the
    last cluster started on this machine, which may be one)."""
    if not address or address == "auto":
        return True
    host = address
    if host.startswith("["):  # [IPv6]:port
        host = host[1:host.find("]")]
    elif host.count(":") == 1:  # host:port
        host = host.split(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, "ray://…"
        return False


@contextlib.contextmanager
def _loopback_only(address: str | None) -> Iterator[None]:
    """While ``ray.init`` runs, make Ray keep ``127.0.0.1`` where :func:`on_loopback` says so.

    Private API, checked against Ray 2.60.0 (tests/test_ray_private.py fails if it changes):
    ``ray.init`` turns a loopback ``_node_ip_address`` or bootstrap address into the machine's
    address through ``ray._private.services.resolve_ip_for_localhost`` unless
    ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` is False; an embedded cluster would then
    listen on every interface, and joining one at 127.0.0.1 would wait for an address it does
    not serve.  Ray's public switch is the :data:`RAY_CLUSTER_ENV` variable, but Ray reads it
    once, when ``ray`` is imported; a library user has usually imported ray already, so the
    constant is set here, for the ``ray.init`` call only (the processes it starts get the
    address on their command line), and restored after.  When the variable was ``0`` before
    the import (the CLI), the constant is False already; when the user set it to ``1``
    (cluster mode), it is left alone.
    """
    if not on_loopback(address) or os.environ.get(RAY_CLUSTER_ENV, "0").lower() in ("1", "true"):
        yield
        return
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             object_store_mb: int = 512) -> bool:
    """Connect to ``address`` or start an embedded local Ray; returns True if we started it.

    An already-initialised Ray (e.g. a test fixture, or a notebook) is reused as is.  Leaves no
    process-wide setting behind; Ray's usage statistics follow its own environment variable
    (the CLI turns them off).  An embedded cluster never outlives this process, and sessions
    left by killed drivers are removed first (see :mod:`pipeline.raysession`).
    """
    import ray

    if ray.is_initialized():
        return False
    if address:
        with _loopback_only(address):
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        _route_worker_output()
        return True
    # short path: Ray's unix sockets live below it (108-byte limit); PAIRFORGE_RAY_TMPDIR overrides
    parent = os.environ.get("PAIRFORGE_RAY_TMPDIR", "/tmp")
    stale = raysession.reap_stale(parent)
    if stale:
        log.info("execution: removed %d Ray session(s) left by killed drivers: %s", len(stale), ", ".join(stale))
    tmp = tempfile.mkdtemp(prefix=raysession.PREFIX, dir=parent)
    _STARTED_TEMP.append(tmp)
    raysession.mark_driver(tmp)
    _WATCHDOGS.append(raysession.start_watchdog(tmp))
    kwargs = dict(address="local", num_cpus=num_cpus or (os.cpu_count() or 1) + 1, object_store_memory=object_store_mb << 20,
                  include_dashboard=False, _temp_dir=tmp, _node_ip_address="127.0.0.1",
                  logging_level=logging.WARNING, log_to_driver=True)
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    _SAVED_ENV.append({k: os.environ.get(k) for k in RAY_SESSION_ENV})
    try:
        with _loopback_only(None), _session_marker(tmp):
            ray.init(**kwargs)
    except BaseException:  # Ctrl-C or a failed start: stop what came up, remove the folder
        shutdown_ray()
        raise
    _route_worker_output()
    return True


@contextlib.contextmanager
def _session_marker(folder: str) -> Iterator[None]:
    """:data:`raysession.SESSION_ENV` in the environment while ``ray.init`` starts the processes
    of the cluster of ``folder`` (they inherit it; this process gets its environment back)."""
    saved = os.environ.get(raysession.SESSION_ENV)
    os.environ[raysession.SESSION_ENV] = folder
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(raysession.SESSION_ENV, None)
        else:
            os.environ[raysession.SESSION_ENV] = saved


# ---------------------------------------------------------------- where workers' output goes
#: set by :func:`log_worker_output` (an entry point's choice): workers' stdout/stderr become log records
_WORKER_OUTPUT_TO_LOG = [False]
#: the logger that carries workers' lines (third-party: kept off the terminal unless -v; see pairforge/logs.py)
WORKER_LOGGER = "pairforge.third_party.ray"


def log_worker_output(enabled: bool = True) -> None:
    """Route what Ray workers print (tracebacks included) into :data:`WORKER_LOGGER` instead of
    the terminal, for clusters this process connects to from now on.  Called by the CLI: the
    command's log file then holds every worker line, and its terminal only pairforge's own
    messages (``-v`` shows them all).  Library users keep Ray's default (lines on stderr)."""
    _WORKER_OUTPUT_TO_LOG[0] = enabled


def _route_worker_output() -> None:
    """Replace Ray's printer of worker output (the ``ray_print_logs`` handler its ``ray.init``
    registers) with one that logs; Ray removes it by that name when it disconnects.

    Private API, checked against Ray 2.60.0 (tests/test_synth_interrupts.py fails if it
    changes); where it is missing, Ray's printer stays.
    """
    if not _WORKER_OUTPUT_TO_LOG[0]:
        return
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", _log_worker_lines)


def _log_worker_lines(batch: dict) -> None:
    """One batch of a worker's output lines, as records: stderr as WARNING, stdout as INFO."""
    logger = logging.getLogger(WORKER_LOGGER)
    who = batch.get("actor_name") or batch.get("task_name") or "worker"
    where = f"pid={batch.get('pid')}" + (f", ip={batch['ip']}" if batch.get("ip") not in (None, batch.get("localhost"))
                                         else "")
    level = logging.WARNING if batch.get("is_err") else logging.INFO
    lines = batch.get("lines", ())
    if batch.get("pid") == "autoscaler":  # its periodic status report: only its events, as Ray prints them
        try:
            from ray._private.worker import filter_autoscaler_events
        except ImportError:
            return
        lines = list(filter_autoscaler_events(list(lines)))
    for line in lines:
        logger.log(level, "(%s %s) %s", who, where, line)


def _restore_session_env() -> None:
    """Undo what starting an embedded cluster did to this process's environment.

    Ray 2.60's ``ray.init()`` of a new local cluster sets ``RAY_AUTH_MODE=token`` in
    ``os.environ`` and keeps it: a later ``ray.init(address=…)`` in the same process (a second
    ``synth`` joining a cluster without token authentication) then presents a token, and its
    actors are cancelled before they start ("all references to the actor were removed").
    Restoring the variable is not enough: Ray caches both its config and the token it loaded.
    Private API, checked against Ray 2.60.0; skipped where it is missing.
    """
    if not _SAVED_ENV:
        return
    while _SAVED_ENV:
        for k, v in _SAVED_ENV.pop().items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    Config.initialize("")                            # re-read RAY_AUTH_MODE
    AuthenticationTokenLoader.instance().reset_cache()  # forget the embedded cluster's token


def shutdown_ray() -> None:
    """Shut down Ray if initialised; for a cluster init_ray started, stop whatever of it is
    left, remove its temp dir and end its watchdog."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _restore_session_env()
    while _STARTED_TEMP:
        raysession.reap(_STARTED_TEMP.pop(), grace_s=5.0)
    while _WATCHDOGS:
        raysession.stop_watchdog(_WATCHDOGS.pop())


# ---------------------------------------------------------------- actors
class _ShardActor:
    """Ray actor wrapper: one ShardProcessor per process."""

    def __init__(self, spec: JobSpec, device: str, torch_threads: int | None):
        # this actor's process is ours alone: the start-up of a worker is an entry point
        from pairforge.degradations.memory import retain_freed_memory

        retain_freed_memory()
        import ray

        node = ray.get_runtime_context().get_node_id()  # which node wrote a shard: its stats say
        self.proc = ShardProcessor(spec, device=device, torch_threads=torch_threads, node=node)

    def ready(self) -> dict:
        return self.proc.info()

    def process(self, task: ShardTask) -> dict:
        return self.proc.process(task)


def _cause(exc: BaseException) -> BaseException:
    """The worker's own exception behind a Ray wrapper (``RayTaskError.cause``)."""
    return getattr(exc, "cause", None) or exc


def _error_text(exc: BaseException) -> str:
    from .storage import redact

    cause = _cause(exc)
    return redact(f"{type(cause).__name__}: {cause}")[:500]


#: one quick write to the job's output store; True if the store took it (see :class:`_Outage`)
StoreProbe = Callable[[], bool]
#: :meth:`_Outage.verdict` results
RETRY, FINAL, DOWN = "retry", "final", "down"


class _Outage:
    """Tells a store that takes no writes at all from an object it refuses, and waits out the first.

    A :class:`storage.StorageError` says only that one object could not be stored within its
    retries.  If ``probe`` (one write) fails too, the store is down: the caller's shard is an
    outage casualty, and so is every shard submitted before an unanswered probe, even when its
    failure arrives after the store came back.  Waiting is bounded by ``budget_s``, counted from
    the first unanswered probe since the last commit (:meth:`committed`), so a store that flaps
    without ever committing a shard cannot hold a job for longer than that either.
    """

    def __init__(self, probe: StoreProbe | None, budget_s: float, delay: Callable[[int], float], *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.probe, self.budget_s, self.delay = probe, budget_s, delay
        self.clock, self.sleep = clock, sleep
        self.down_since: float | None = None   # first unanswered probe since the last commit
        self.last_down = float("-inf")         # the latest unanswered probe

    def committed(self) -> None:
        self.down_since = None

    def verdict(self, submitted_at: float) -> str:
        """After a storage failure of a shard submitted at ``submitted_at`` (this clock):
        :data:`RETRY` (it met an outage that is over), :data:`FINAL` (the store takes writes and
        was not seen down since: the object's own failure) or :data:`DOWN` (still down after the
        budget)."""
        if self.probe is None:
            return FINAL
        if self._answers():
            return RETRY if self.last_down >= submitted_at else FINAL
        return RETRY if self._wait() else DOWN

    def _answers(self) -> bool:
        if self.probe():
            return True
        self.last_down = self.clock()
        if self.down_since is None:
            self.down_since = self.last_down
        return False

    def _left(self) -> float:
        return self.budget_s - (self.clock() - self.down_since)

    def _wait(self) -> bool:
        """Probe with the storage backoff until the store answers (True) or the budget is spent."""
        log.warning("execution: the store takes no writes; no new shard starts until it does (waiting up to %.0fs)",
                    max(0.0, self._left()))
        tries = 0
        while self._left() > 0:
            tries += 1
            self.sleep(max(0.0, min(self.delay(tries), self._left())))
            if self._answers():
                log.warning("execution: the store answers again after %.1fs; the shards it failed run again",
                            self.clock() - self.down_since)
                return True
        log.error("execution: the store took no writes for %.0fs; stopping", self.budget_s)
        return False


class _Failures:
    """What to do with each failed shard attempt, shared by both executors.

    Application errors and dead workers are retried up to ``max_retries`` times.  A persistent
    storage failure goes to ``outage`` first: a shard that met a store which was down is run
    again once the store answers (not counted as an attempt), and a store that stays down past
    the outage budget sets :attr:`stop`.  Otherwise the store takes writes: the shard runs once
    more (an outage that ended between its upload giving up and the probe looks the same), and a
    second such failure is the object's own: final for its shard and counted towards
    ``storage_failure_limit`` consecutive ones, after which :attr:`stop` is set too.

    Each attempt's failure is logged at INFO (the command's log file; ``-v`` shows it): the
    result names every shard that failed for good, and the CLI prints one line for each.
    """

    def __init__(self, max_retries: int, storage_failure_limit: int = STORAGE_FAILURE_LIMIT,
                 outage: _Outage | None = None):
        self.max_retries, self.storage_failure_limit = max_retries, storage_failure_limit
        self.outage = outage or _Outage(None, 0.0, lambda _: 0.0)
        self.attempts: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        self.storage_streak = 0
        self.store_down = False
        self.last_storage_error = ""
        self.second_runs: set[str] = set()  # shards given one more run after a FINAL storage verdict

    @property
    def stop(self) -> bool:
        return self.store_down or self.storage_streak >= self.storage_failure_limit

    def succeeded(self) -> None:
        self.storage_streak = 0
        self.outage.committed()

    def should_retry(self, task: ShardTask, exc: BaseException, submitted_at: float) -> bool:
        """Record a failed attempt of ``task`` (started at ``submitted_at``, ``time.monotonic``);
        True if it is to be run again."""
        from .storage import StorageError

        msg = _error_text(exc)
        if isinstance(_cause(exc), StorageError):
            return self._storage_failed(task, msg, submitted_at)
        n = self.attempts[task.name] = self.attempts.get(task.name, 0) + 1
        if n <= self.max_retries:
            log.info("execution: shard %s failed (attempt %d): %s; retrying", task.name, n, msg)
            return True
        log.info("execution: shard %s failed %d times: %s", task.name, n, msg, exc_info=exc)  # the worker's traceback
        self.failed[task.name] = msg
        return False

    def _storage_failed(self, task: ShardTask, msg: str, submitted_at: float) -> bool:
        verdict = self.outage.verdict(submitted_at)
        if verdict == RETRY:
            log.warning("execution: shard %s failed while the store was down (%s); running it again",
                        task.name, msg[:200])
            return True
        if verdict == FINAL and task.name not in self.second_runs:
            # the store takes the probe's write: either this object fails on its own, or an outage
            # ended between the upload giving up and the probe (no probe ever met it). One more run
            # tells them apart, at the cost of one shard run for an object that fails on its own.
            self.second_runs.add(task.name)
            log.info("execution: shard %s failed on storage (%s) but the store takes writes; running it once more",
                     task.name, msg[:200])
            return True
        self.last_storage_error = msg
        if verdict == DOWN:
            self.store_down = True
        else:
            self.storage_streak += 1
        log.info("execution: shard %s failed on storage: %s", task.name, msg)
        self.failed[task.name] = msg
        return False

    def abandon(self, tasks: list[ShardTask]) -> None:
        """Mark ``tasks`` (queued or cut short) as not run because the run stopped."""
        why = (f"the store took no writes for {self.outage.budget_s:.0f}s" if self.store_down
               else f"the job stopped after {self.storage_streak} storage failures in a row")
        for t in tasks:
            self.failed.setdefault(t.name, f"{NOT_RUN}{why} (last: {self.last_storage_error})")
        if tasks:
            log.info("execution: storage looks down; stopping with %d shard(s) not run", len(tasks))


def _outage(spec: JobSpec, probe: StoreProbe | None) -> _Outage:
    """The outage policy of a run: ``probe``, waited for up to the storage deadline, with its backoff."""
    from .storage import StorageConfig

    config = spec.storage_config or StorageConfig.from_env()
    return _Outage(probe, config.deadline_s, config.backoff)


class RayExecutor:
    """Runs shard tasks on ``workers`` Ray actors with bounded queueing and shard retries."""

    def __init__(self, spec: JobSpec, workers: int, *, device: str = "auto", cpus_per_worker: float | None = None,
                 torch_threads: int | None = None, max_retries: int = 2, ready_timeout: float = 600.0,
                 storage_failure_limit: int = STORAGE_FAILURE_LIMIT, store_probe: StoreProbe | None = None):
        self.spec, self.workers, self.device = spec, max(1, int(workers)), device
        self.cpus_per_worker, self.torch_threads = cpus_per_worker, torch_threads
        self.max_retries, self.ready_timeout = max_retries, ready_timeout
        self.storage_failure_limit, self.store_probe = storage_failure_limit, store_probe

    def _placement(self) -> tuple[int, float, float, str, int]:
        """(workers, num_cpus, num_gpus per actor, actor device, torch threads) that fit the cluster."""
        import ray

        res = ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
        workers = self.workers
        if self.device == "cuda" and gpus < 1:
            raise UsageError("--device cuda: the Ray cluster reports no GPU")
        use_gpu = self.device in ("auto", "cuda") and gpus >= 1
        num_gpus = min(1.0, gpus / workers) if use_gpu else 0.0
        # one CPU slot per actor: degradation runs single-threaded (see worker.CPU_TORCH_THREADS),
        # its decode/encode threads mostly wait on the GIL-free codecs
        cpw = self.cpus_per_worker or 1
        cpw = float(cpw)
        # never ask for more than the cluster has: actors would stay pending forever
        fit = int(cpus // cpw) if cpw > 0 else workers
        if fit < workers:
            cpw = max(0.25, cpus / workers) if cpus else cpw
            log.warning("execution: %d workers x %.2f CPU does not fit %g CPUs; using %.2f CPU each",
                        workers, float(self.cpus_per_worker or 1), cpus, cpw)
        threads = self.torch_threads  # None: the worker's default (one thread per worker on CPU)
        # "cuda" on a GPU actor: the worker warns and uses CPU if CUDA cannot see the GPU it got
        return workers, cpw, num_gpus, ("cuda" if use_gpu else "cpu"), threads

    def run(self, tasks: list[ShardTask], on_done: OnDone | None = None) -> RunReport:
        import ray

        workers, cpw, ngpu, device, threads = self._placement()
        workers = min(workers, max(1, len(tasks)))
        # max_concurrency=2 matches the two shards queued per actor: one shard's encode/upload
        # tail overlaps the next one's decode and degradation (the degrader itself is locked)
        # SPREAD: one actor per node before a second on any (Ray's default packs a node first),
        # so a CPU cluster uses every node's cores; an actor replacing a dead one goes where
        # there is room, e.g. onto the surviving nodes when a node is lost
        cls = ray.remote(_ShardActor).options(num_cpus=cpw, num_gpus=ngpu, max_restarts=0, max_concurrency=2,
                                              scheduling_strategy="SPREAD")
        spec_ref = ray.put(self.spec)
        actors = [cls.remote(spec_ref, device, threads) for _ in range(workers)]
        t0 = time.perf_counter()
        try:
            infos = self._wait_ready(actors)
            t1 = time.perf_counter()
            report = self._schedule(actors, tasks, on_done, infos, cls, spec_ref, device, threads)
            report.startup_s, report.run_s = t1 - t0, time.perf_counter() - t1
            return report
        finally:
            for a in actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - best-effort clean-up; the original failure is what gets reported
                    pass

    def _wait_ready(self, actors: list) -> list[dict]:
        import ray

        refs = [a.ready.remote() for a in actors]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self.ready_timeout)
        if pending:
            raise WorkFailed(f"{len(pending)} of {len(refs)} pipeline workers could not start within "
                               f"{self.ready_timeout:.0f}s; cluster resources: {ray.cluster_resources()}")
        return ray.get(refs)

    def _schedule(self, actors, tasks, on_done, infos, cls, spec_ref, device, threads) -> RunReport:
        import ray

        queue = deque(tasks)
        failures = _Failures(self.max_retries, self.storage_failure_limit, _outage(self.spec, self.store_probe))
        inflight: dict = {}  # ref -> (actor index, task, when it was submitted)
        load = [0] * len(actors)
        done: list[str] = []

        def submit(ai: int) -> None:
            while load[ai] < 2 and queue:
                t = queue.popleft()
                inflight[actors[ai].process.remote(t)] = (ai, t, time.monotonic())
                load[ai] += 1

        for ai in range(len(actors)):
            submit(ai)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            ai, task, submitted = inflight.pop(ref)
            load[ai] -= 1
            try:
                stats = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the process died (OOM, segfault, node loss)
                log.warning("execution: worker %d died on %s: %s; restarting it", ai, task.name, _error_text(exc))
                if failures.should_retry(task, exc, submitted):
                    queue.append(task)
                try:
                    ray.kill(actors[ai])
                except Exception:  # noqa: BLE001 - best-effort clean-up; the original failure is what gets reported
                    pass
                actors[ai] = cls.remote(spec_ref, device, threads)
                # calls still queued on the dead actor would fail too: hand them to the new one
                for r in [r for r, (a, _, _) in inflight.items() if a == ai]:
                    queue.appendleft(inflight.pop(r)[1])
                load[ai] = 0
            except Exception as exc:  # noqa: BLE001 - application error inside the shard
                if failures.should_retry(task, exc, submitted):
                    queue.append(task)
            else:
                done.append(task.name)
                failures.succeeded()
                if on_done:
                    on_done(task, stats)
            if failures.stop:  # run() kills the actors, cutting the shards still in flight
                failures.abandon([t for _, t, _ in inflight.values()] + list(queue))
                break
            for j in range(len(actors)):
                submit(j)
        return RunReport(done, failures.failed, infos)


class InlineExecutor:
    """Same contract as :class:`RayExecutor`, in this process (debugging, benchmarks, no Ray)."""

    def __init__(self, spec: JobSpec, *, device: str = "auto", torch_threads: int | None = None,
                 max_retries: int = 1, storage_failure_limit: int = STORAGE_FAILURE_LIMIT,
                 store_probe: StoreProbe | None = None):
        self.spec, self.device, self.torch_threads, self.max_retries = spec, device, torch_threads, max_retries
        self.storage_failure_limit, self.store_probe = storage_failure_limit, store_probe

    def run(self, tasks: list[ShardTask], on_done: OnDone | None = None) -> RunReport:
        import torch

        prev = torch.get_num_threads()
        t0 = time.perf_counter()
        proc = ShardProcessor(self.spec, device=self.device, torch_threads=self.torch_threads)
        t1 = time.perf_counter()
        done: list[str] = []
        failures = _Failures(self.max_retries, self.storage_failure_limit, _outage(self.spec, self.store_probe))
        try:
            for i, task in enumerate(tasks):
                if failures.stop:
                    failures.abandon(tasks[i:])
                    break
                stats = self._process(proc, task, failures)
                if stats is not None:
                    done.append(task.name)
                    failures.succeeded()
                    if on_done:
                        on_done(task, stats)
            return RunReport(done, failures.failed, [proc.info()], t1 - t0, time.perf_counter() - t1)
        finally:
            proc.close()
            torch.set_num_threads(prev)

    @staticmethod
    def _process(proc: ShardProcessor, task: ShardTask, failures: _Failures) -> dict | None:
        """Run one shard, retrying as ``failures`` decides; its stats, or None if it failed."""
        while True:
            started = time.monotonic()
            try:
                return proc.process(task)
            except Exception as exc:  # noqa: BLE001 - classified by the failure policy
                if not failures.should_retry(task, exc, started):
                    return None
                time.sleep(0.2)
