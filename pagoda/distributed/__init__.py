"""Tensor and pipeline parallelism on torch.distributed: process groups, sharded layers' collectives, stages,
worker processes (local, or Ray actors on several nodes).

- :mod:`.parallel_state`: one :class:`TPGroup` per process (rank, world size, the device group), passed
  explicitly to the model that needs it (no module-level global);
- :mod:`.messages`: the typed (msgspec) control messages rank 0 sends its workers;
- :mod:`.config_codec`: an :class:`~pagoda.config.EngineConfig` as builtins for the spawn arguments;
- :mod:`.pipeline`: the layer split over stages and the hidden states sent stage to stage;
- :mod:`.executor`: the engine core's side (start the other ranks, one message per step, liveness), mp;
- :mod:`.ray_executor`: the same over Ray actors placed by a placement group;
- :mod:`.worker`: a worker rank's loop (the same :class:`~pagoda.worker.model_runner.ModelRunner`).
"""
