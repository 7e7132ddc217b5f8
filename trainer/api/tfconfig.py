"""TF_CONFIG: the environment variable that tells a MultiWorkerMirroredStrategy worker its peers.

The local runner names workers by localhost ports and the operator by their pods' stable DNS
names; both write the same document, and the worker reads its place in the job back from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

ENV = "TF_CONFIG"


def tf_config(addresses: list[str], index: int) -> str:
    """The TF_CONFIG of worker `index` among `addresses` (worker 0 is the chief)."""
    return json.dumps(
        {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}
    )


@dataclass(frozen=True)
class Cluster:
    """This worker's place in the job, from TF_CONFIG (one worker without it)."""

    index: int
    count: int

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @classmethod
    def parse(cls, text: str | None) -> Cluster:
        config = json.loads(text or "{}")
        workers = config.get("cluster", {}).get("worker", [])
        return cls(index=int(config.get("task", {}).get("index", 0)), count=max(len(workers), 1))

    @classmethod
    def from_env(cls) -> Cluster:
        return cls.parse(os.environ.get(ENV))
