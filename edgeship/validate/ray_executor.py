"""The Ray executor: shards of the data set validated by Ray tasks, merged into the local executor's figures.

Only imported when ``--executor ray`` is chosen (``pip install 'edgeship[ray]'``). The driver:

1. connects to Ray: an already initialised Ray, else ``address`` (a running cluster, e.g. ``ray start --head`` then
   ``--address HOST:6379``), else a local one started for this run (``include_dashboard=False``) and shut down after;
2. cuts the data set into shards on batch boundaries (:func:`edgeship.validate.shard.shard_bounds`) and keeps
   ``workers`` shard tasks in flight, each holding ``threads`` CPUs. A task opens the artifacts in its worker from
   the :class:`Job` (paths and manifest entries; runners are never pickled; a worker keeps its session for the
   job's next shard) and returns a :class:`Partial`;
3. merges the partials in shard order (exact: :class:`edgeship.validate.metrics.Stream`);
4. times every artifact once, in one task on one worker holding ``threads`` CPUs, after the shards are done, so
   latency is not measured on a busy cluster; the report's ``executor`` record says on which node.

Faults (Ray's documented task semantics, https://docs.ray.io/en/latest/ray-core/fault_tolerance/tasks.html): a task
whose worker process dies (crash, OOM kill, lost node) is re-run up to ``max_retries`` times; exceptions raised by
edgeship's own code are not retried (``retry_exceptions=False``: they are deterministic, e.g. a bad input), and a bad
image never raises (it is failed alone, with its reason). Ctrl-C cancels every shard in flight
(``ray.cancel(force=True)``) before the interrupt propagates, and no report is written, so no partial files.

``EDGESHIP_FAULT_EXIT_ONCE=<marker file>`` in a worker's environment (e.g. through ``runtime_env``) makes the first
shard task that sees no marker create it and kill its own worker process: a fault drill, used by the tests.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from edgeship.errors import EnvironmentProblem, UserError
from edgeship.validate.shard import Executor, Job, Outcome, Partial, Session, Timing, merge_partials

if TYPE_CHECKING:
    from edgeship.models.loading import LoadedModel

#: Tests' fault injection: a shard task whose worker finds this variable kills its own process, once (the marker
#: file it names does not exist yet, and is then made) or on every try (the value ``always``).
FAULT_ENV = "EDGESHIP_FAULT_EXIT_ONCE"
SHARDS_PER_WORKER = 4
MIN_SHARD_BATCHES = 4  # a shard holds at least this many batches: fewer tasks, less driver overhead


def shard_bounds(count: int, batch_size: int, workers: int, shard_size: int | None = None) -> list[tuple[int, int]]:
    """``count`` samples cut into consecutive (start, stop) ranges of ``shard_size`` rounded up to whole batches
    (default: about SHARDS_PER_WORKER per worker, at least MIN_SHARD_BATCHES batches each). Each starts on a
    multiple of ``batch_size``, so a shard's batches are the single stream's and merging them is exact."""
    if shard_size:
        per = -(-shard_size // batch_size) * batch_size
    else:
        per = max(MIN_SHARD_BATCHES * batch_size, -(-count // (workers * SHARDS_PER_WORKER * batch_size)) * batch_size)
    return [(a, min(count, a + per)) for a in range(0, count, per)]

_session: tuple[str, Session] | None = None  # this worker's open artifacts, for the job's next shard


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise EnvironmentProblem("--executor ray needs Ray, which is not installed: pip install 'edgeship[ray]' (or "
                                 "use the default local executor)") from None
    return ray


def pin_threads(threads: int) -> bool:
    """Hold this worker's TensorFlow (the Keras reference) to ``threads`` intra-op threads and one inter-op thread,
    as the runtimes are (ORT, LiteRT take ``threads``; Ray sets OMP_NUM_THREADS to the task's CPUs). Without it the
    reference alone would use every core of the node and one worker would already fill it. TensorFlow fixes its
    pools when it runs its first op: False when this worker process had already started them (then they stay)."""
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from edgeship._tf import tf

    try:
        tf().config.threading.set_intra_op_parallelism_threads(threads)
        tf().config.threading.set_inter_op_parallelism_threads(1)
        return True
    except RuntimeError:
        return False


def _worker_session(job: Job, token: str) -> Session:
    global _session
    if _session is None or _session[0] != token:
        if _session is not None:
            _session[1].close()
        _session = None
        from edgeship._tf import quiet_environment

        quiet_environment()
        pin_threads(job.threads)
        _session = (token, Session(job))
    return _session[1]


def _node() -> dict[str, Any]:
    import socket

    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "pid": os.getpid()}


def _shard_task(job: Job, token: str, start: int, stop: int) -> tuple[Partial, float]:
    """Runs in a Ray worker: the shard's partial statistics and the seconds it took in the worker."""
    marker = os.environ.get(FAULT_ENV)
    if marker == "always":
        os._exit(1)
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker dies mid-task: Ray re-runs the task (max_retries)
    t0 = time.perf_counter()
    partial = _worker_session(job, token).compare(start, stop)
    partial.node = _node()
    return partial, time.perf_counter() - t0


def _latency_task(job: Job, token: str, which: list[int]) -> tuple[dict[int, Timing], dict[str, Any], dict[str, Any]]:
    """Runs in one Ray worker: every artifact timed once, and where."""
    global _session
    from edgeship.machine import describe_machine

    session = _worker_session(job, token)
    try:
        timings = session.measure(which)
    finally:
        session.close()
        _session = None
    return timings, describe_machine().to_dict(), _node()


class RayExecutor(Executor):
    """``address``: a Ray cluster to join (default: the running Ray, else a local one started for this run);
    ``workers``: shard tasks in flight (default: the cluster's CPUs / threads); ``shard_size``: samples per shard
    (default: about ``SHARDS_PER_WORKER`` shards per worker, at least ``MIN_SHARD_BATCHES`` batches each, rounded to
    whole batches); ``max_retries``: re-runs of a shard whose worker died; ``runtime_env``: Ray's (e.g.
    ``{"env_vars": {...}}``)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, shard_size: int | None = None,
                 max_retries: int = 3, runtime_env: dict[str, Any] | None = None) -> None:
        if workers is not None and workers < 1:
            raise UserError(f"--workers must be 1 or more, got {workers}")
        if shard_size is not None and shard_size < 1:
            raise UserError(f"shard_size must be 1 or more, got {shard_size}")
        self.address, self.workers, self.shard_size = address, workers, shard_size
        self.max_retries, self.runtime_env = max_retries, runtime_env

    def _connect(self, ray: Any, threads: int) -> bool:
        """Join or start Ray; True when this run started it (and so shuts it down). An ``address`` nothing answers
        on is refused first, even when Ray is already initialised in this process."""
        if self.address:
            probe_address(self.address)
        if ray.is_initialized():
            return False
        import logging

        verbose = bool(os.environ.get("EDGESHIP_VERBOSE"))
        kwargs: dict[str, Any] = dict(logging_level=logging.INFO if verbose else logging.ERROR,
                                      log_to_driver=verbose)
        import signal
        import threading

        main_thread = threading.current_thread() is threading.main_thread()
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                cpus = None if self.workers is None else self.workers * threads
                ray.init(num_cpus=cpus, include_dashboard=False, **kwargs)
            # ray.init installs its C++ failure handler for SIGTERM in this process, which aborts it (exit 134)
            # instead of edgeship's cleanup and exit 143: the Python handlers in place before are put back
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
        except ConnectionError as e:
            raise EnvironmentProblem(f"cannot reach the Ray cluster at {self.address}: {e}; start one with "
                                     "'ray start --head' or leave --address out for a local one") from None
        return True

    def run(self, job: Job, reference: LoadedModel | None, progress: bool = True) -> Outcome:
        ray = import_ray()
        if reference is not None and str(job.reference).startswith("python:"):
            raise UserError("the Ray executor reopens the reference in each worker: pass it as a file or variant "
                            "name, not an in-memory model")
        started = self._connect(ray, job.threads)
        try:
            return self._run(ray, job, progress)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, job: Job, progress: bool) -> Outcome:
        from edgeship.progress import progress as progress_bar

        cpus = int(ray.cluster_resources().get("CPU", 1))
        if cpus < job.threads:
            raise UserError(f"--threads {job.threads} needs {job.threads} CPUs on a worker; the cluster has {cpus}")
        workers = self.workers or max(1, cpus // job.threads)
        bounds = shard_bounds(job.count, job.batch_size, workers, self.shard_size)
        token = uuid.uuid4().hex
        options: dict[str, Any] = dict(num_cpus=job.threads, max_retries=self.max_retries, retry_exceptions=False)
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        shard = ray.remote(_shard_task).options(**options)
        job_ref = ray.put(job)
        pending: dict[Any, tuple[int, float]] = {}  # ref -> (shard number, submitted at)
        partials: list[Partial] = []
        seconds: list[float] = []
        overhead: list[float] = []
        todo = list(enumerate(bounds))
        t_start = time.perf_counter()
        bar = progress_bar(total=job.count, desc=f"validate (ray, {workers} workers)", unit="image", enabled=progress,
                           steps=False)
        try:
            while todo or pending:
                while todo and len(pending) < workers:
                    k, (a, b) = todo.pop(0)
                    pending[shard.remote(job_ref, token, a, b)] = (k, time.perf_counter())
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    k, submitted = pending.pop(ref)
                    partial, took = _get(ray, ref)
                    partials.append(partial)
                    seconds.append(took)
                    overhead.append(time.perf_counter() - submitted - took)
                    bar.update(partial.stop - partial.start)
            wall = time.perf_counter() - t_start
            whole = merge_partials(partials)
            which = [i for i, a in whole.artifacts.items() if a.status.value == "passed"]
            latency = ray.remote(_latency_task).options(**options)
            timings, machine, node = _get(ray, latency.remote(job_ref, token, which))
        except BaseException:  # Ctrl-C (KeyboardInterrupt) or a failed shard: stop the cluster's work for this run
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
        nodes = sorted({p.node.get("ip", "?") for p in partials})
        info = {"name": self.name, "address": self.address or "local", "workers": workers, "shards": len(bounds),
                "shard_size": bounds[0][1] - bounds[0][0], "nodes": nodes, "latency_node": node,
                "compare_seconds": wall, "shard_seconds": seconds,
                "overhead_per_shard_s": sum(overhead) / len(overhead) if overhead else None}
        return Outcome(whole, timings, machine, info)


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) nothing answers on within ``timeout_s`` seconds, before
    ``ray.init``, which retries an unreachable cluster for minutes while printing its own log lines (issue 29:
    300-400 s). Raises :class:`EnvironmentProblem` (exit 3). ``auto`` and other forms are left to Ray."""
    import re
    import socket

    m = re.fullmatch(r"(?:ray://)?(\[[^\]]+\]|[^:/\s]+):(\d{1,5})", address.strip())
    if not m:
        return
    host, port = m.group(1).strip("[]"), int(m.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        why = "no answer in {:g} s".format(timeout_s) if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise EnvironmentProblem(f"cannot reach the Ray cluster at {address}: {why}; start one there with "
                                 "'ray start --head', or leave --address out for a local one") from None


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get``, with edgeship's own errors (bad input) re-raised as themselves, and a task whose worker kept
    dying (after ``max_retries`` re-runs: crashes, OOM kills, lost nodes) as the environment's problem (exit 3)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError,
            ray.exceptions.ObjectLostError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EnvironmentProblem(f"a Ray worker died on every try ({type(e).__name__}: {first[:200]}); check the "
                                 "cluster's memory and its logs (ray logs), or use the local executor") from None
