"""The contract between the trainer, the model server and the operator.

Everything one of them writes and another reads is defined here once, with no TensorFlow, kopf
or FastAPI import, so the operator (whose image has no TensorFlow) and the tests' stand-ins can
import it as freely as the trainer does:

- `spec`: the TrainingJob resource, its API group, version, plural and name limit;
- `status`: its status schema, phases, condition types and the reasons conditions and events give;
- `records`: what a worker prints (one JSON record per line), its result and its exit codes;
- `metrics`: which way a metric improves;
- `layout`: where a job's checkpoints, result and exported model versions live;
- `tfconfig`: the TF_CONFIG that places a worker in its cluster;
- `entrypoints`: the commands and environment variables that start a worker or a model server.
"""
