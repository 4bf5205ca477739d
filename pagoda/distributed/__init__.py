"""Tensor parallelism on torch.distributed: process groups, sharded layers' collectives, worker processes.

- :mod:`.parallel_state`: one :class:`TPGroup` per process (rank, world size, the device group), passed
  explicitly to the model that needs it (no module-level global);
- :mod:`.messages`: the typed (msgspec) control messages rank 0 sends its workers;
- :mod:`.config_codec`: an :class:`~pagoda.config.EngineConfig` as builtins for the spawn arguments;
- :mod:`.executor`: rank 0's side (spawn ranks 1..N-1, one message per step, liveness);
- :mod:`.worker`: a worker rank's loop (the same :class:`~pagoda.worker.model_runner.ModelRunner`).
"""
