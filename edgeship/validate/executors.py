"""Where validation runs: one small interface, two executors.

- ``local`` (the default): this process opens every artifact and streams the whole data set through the comparison
  loop, then times each artifact. It imports no Ray.
- ``ray``: the data set is cut into shards on batch boundaries; one Ray task per shard opens the artifacts in its
  worker (paths and the manifest's entries travel, never runners) and runs its shard through the same loop
  (:class:`edgeship.validate.shard.Session`); the driver merges the partial statistics in shard order into exactly
  the local figures, then one task on one worker, holding ``threads`` CPUs, times every artifact
  (:mod:`edgeship.validate.ray_executor`).

An executor returns an :class:`Outcome`: the merged :class:`Partial`, the timings, and where they were measured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeship.errors import UserError
from edgeship.validate.options import ExecutorName
from edgeship.validate.shard import Executor, Job, Outcome, Session  # noqa: F401  (Executor, Outcome: re-exported)

if TYPE_CHECKING:
    from edgeship.models.loading import LoadedModel

EXECUTORS = tuple(e.value for e in ExecutorName)


class LocalExecutor(Executor):
    name = "local"

    def run(self, job: Job, reference: LoadedModel | None, progress: bool = True) -> Outcome:
        from edgeship.progress import progress as progress_bar

        session = Session(job, reference)
        try:
            with progress_bar(total=job.count, desc="validate", unit="image", enabled=progress, steps=False) as bar:
                partial = session.compare(0, job.count, on_batch=bar.update)
            timings = session.measure()
        finally:
            session.close()
        return Outcome(partial, timings, info={"name": self.name})


def get_executor(name: str | None = "local", *, address: str | None = None, workers: int | None = None,
                 **options: Any) -> Executor:
    """``name``: "local" or "ray"; ``address`` and ``workers`` (and ``options``) are the Ray executor's."""
    name = (name or "local").lower()
    if name == "local":
        if address is not None or workers is not None:
            raise UserError("--address and --workers apply to --executor ray only")
        return LocalExecutor()
    if name == "ray":
        from edgeship.validate.ray_executor import RayExecutor

        return RayExecutor(address=address, workers=workers, **options)
    raise UserError(f"unknown executor '{name}': use one of {', '.join(EXECUTORS)}")
