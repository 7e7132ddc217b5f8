"""What a TrainingJob gets for the fields it leaves out, from the operator's settings.

The chart sets these once for a cluster (`jobDefaults` in its values), so that a job written
for one cluster runs on another: the trainer image and the storage are facts about the
cluster, not about the job. They are resolved on every reconcile, like kube's own defaults,
and never written back into the job's spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetrain.trainer.api.spec import (
    LOCAL_TRAINER_IMAGE,
    SpecError,
    Storage,
    TrainingJob,
)

LOCATION_FIELDS = ("claim_name", "uri")
"""A job that sets either keeps its own storage; otherwise the default storage applies."""


@dataclass(frozen=True)
class JobDefaults:
    image: str = LOCAL_TRAINER_IMAGE
    """`spec.workers.image` when the job names none."""
    storage: Storage | None = None
    """`spec.storage` when the job names neither a claim nor a store."""

    def apply(self, job: TrainingJob) -> TrainingJob:
        """The job as the operator runs it; raises SpecError when it still lacks storage."""
        spec = job.spec
        workers = spec.workers
        if workers.image is None:
            workers = workers.model_copy(update={"image": self.image})
        storage = spec.storage
        if self.storage is not None and not any(getattr(storage, f) for f in LOCATION_FIELDS):
            # What the job set itself (its data claim, say) wins over the default.
            given = storage.model_dump(exclude_unset=True, exclude=set(LOCATION_FIELDS))
            storage = Storage.model_validate({**self.storage.model_dump(), **given})
        if spec.promotion.enabled and not (storage.claim_name or storage.uri):
            raise SpecError(
                "spec.storage.claimName or spec.storage.uri is required when "
                "spec.promotion.enabled is true (the serving pods read the exported model "
                "from there), and this operator has no default storage: name one in the job, "
                "or set the chart's jobDefaults.storage"
            )
        spec = spec.model_copy(update={"workers": workers, "storage": storage})
        return job.model_copy(update={"spec": spec})
