"""``--distributed-executor-backend ray``: worker ranks as Ray actors, placed over the nodes of a Ray cluster.

Start-up:

1. join a cluster (:func:`connect_ray`): the one this process already joined, else ``RAY_ADDRESS``, else the
   running one (``address="auto"``), else a new local one. An address that cannot be reached is a start-up
   error naming the flag within seconds (a TCP probe before ``ray.init``);
2. a placement group of one bundle per rank (``{"GPU": 1}`` on CUDA, ``{"CPU": 1}`` on the CPU), ``PACK``
   strategy; bundle ``r`` holds rank ``r``. The engine core's own rank is not an actor, but its bundle is
   pinned to this node (Ray's ``node:<ip>`` resource) and reserved, so no actor takes its device. Too few
   resources, or a group not placed within ``_PLACEMENT_TIMEOUT_S``: a start-up error naming the flag;
3. torch.distributed through a TCP store the engine core serves on this node's address (any rank may be the
   store's host this way, and the workers only need to reach this node).

Steps: every actor gets the same msgpack frames as the mp workers (:mod:`pagoda.distributed.messages`), one
actor call per frame; Ray runs one caller's calls on an actor in order. Nothing else crosses a process
boundary (the bytes are what Ray pickles). Liveness: the results of earlier calls are checked before each step;
a dead actor's calls fail with Ray's ``RayActorError``, which becomes :class:`WorkerDied`.
"""

from __future__ import annotations

import logging
import socket
import weakref
from typing import Any

import torch.distributed as dist

from pagoda import envs
from pagoda.config import EngineConfig
from pagoda.distributed import messages as m
from pagoda.distributed.executor import Executor
from pagoda.distributed.parallel_state import destroy_tp_group

logger = logging.getLogger("pagoda")

FLAG = "--distributed-executor-backend ray"
_PROBE_TIMEOUT_S = 5.0
_PLACEMENT_TIMEOUT_S = 30.0


def connect_ray(address: str | None) -> bool:
    """Join a Ray cluster (module docstring, step 1). Returns True when this call started the connection (the
    executor then ends it at shutdown)."""
    import ray

    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address in (None, "auto"):
        try:
            ray.init(address="auto", **kw)
        except ConnectionError:
            if address == "auto":
                raise ValueError(f"{FLAG}: RAY_ADDRESS=auto but no Ray cluster runs on this machine.") from None
            ray.init(include_dashboard=False, **kw)  # no cluster: a local one
        return True
    if address.startswith("ray://"):  # Ray Client: this process would not be a node of the cluster
        raise ValueError(f"{FLAG}: RAY_ADDRESS={address!r} is a Ray Client address; the engine core must run on a "
                         f"node of the cluster: run pagoda serve on the head node with RAY_ADDRESS=auto or host:port.")
    if address != "local":
        _probe(address)
    ray.init(address=address, **kw)
    return True


def _probe(address: str) -> None:
    """Fail within seconds when ``address`` (``[ray://]host[:port]``) does not answer."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "6379")
    try:
        socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        raise ValueError(f"{FLAG}: the Ray cluster at RAY_ADDRESS={address!r} cannot be reached ({e}). Start it "
                         f"(ray start --head) or fix RAY_ADDRESS.") from None


class _RayWorker:
    """The actor's body: a :class:`~pagoda.distributed.worker.WorkerRank` fed msgpack frames."""

    def __init__(self) -> None:
        self.worker: Any = None

    def where(self) -> tuple[str, list[int]]:
        import ray

        return ray.get_runtime_context().get_node_id(), [int(i) for i in ray.get_gpu_ids()]

    def start(self, raw_cfg: bytes, rank: int, host: str, port: int, world: int, cuda: bool) -> bytes:
        import datetime
        import logging as _logging

        from pagoda.distributed.worker import WorkerRank

        _logging.getLogger("pagoda").setLevel(_logging.WARNING)
        try:
            store = dist.TCPStore(host, port, world, is_master=False,
                                  timeout=datetime.timedelta(seconds=envs.dist_timeout_s()))
            self.worker = WorkerRank(raw_cfg, rank, store=store, device_index=0 if cuda else None)
            return self.worker.ready()
        except Exception as e:
            return m.encoder.encode(m.WorkerFailed(rank, f"{type(e).__name__}: {e}"))

    def handle(self, raw: bytes) -> None:
        self.worker.handle(raw)

    def stop(self) -> None:
        destroy_tp_group()


class RayExecutor(Executor):
    """Worker ranks as Ray actors; ready when the constructor returns."""

    explain_wait_s = 20.0  # Ray reports an actor's death through its pending calls after a moment (longer when busy)

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__(cfg)
        import ray

        self._own_ray = connect_ray(envs.ray_address())
        self.cuda = cfg.device.type == "cuda"
        try:
            self.pg = self._placement_group(ray)
        except BaseException:
            if self._own_ray:
                ray.shutdown()
            raise
        self.actors: dict[int, Any] = {}
        self.node_ids: dict[int, str] = {}  # rank -> the Ray node it runs on (the engine core's rank too)
        self._pending: list[tuple[int, Any, bool]] = []  # (rank, ObjectRef, is the start call)
        self._dead_ranks: dict[int, str] = {}
        self._finalizer = weakref.finalize(self, _stop, self.actors, self.pg, self._own_ray)
        try:
            self._start_actors(cfg, ray)
        except BaseException:  # stop the actors now: the traceback keeps this half-built executor reachable
            self._finalizer()
            raise
        logger.info("distributed: %d ranks (tensor %d x pipeline %d, %s, ray) on %d node(s)", self.world_size,
                    self.tp_size, self.pp_size, "nccl" if self.cuda else "gloo", len(set(self.node_ids.values())))

    def _start_actors(self, cfg: EngineConfig, ray: Any) -> None:
        """Start every worker actor and join the group with them."""
        self._gpu = self._reserve_driver_bundle(ray)
        host = ray.util.get_node_ip_address()
        store = dist.TCPStore(host, 0, self.world_size, is_master=True, wait_for_workers=False,
                              timeout=_timedelta(envs.dist_timeout_s()))
        remote = ray.remote(_RayWorker)
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        for rank in self.worker_ranks:
            strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank)
            actor = remote.options(num_cpus=0 if self.cuda else 1, num_gpus=1 if self.cuda else 0,
                                   scheduling_strategy=strategy).remote()
            self.actors[rank] = actor
        where = ray.get([a.where.remote() for a in self.actors.values()], timeout=envs.dist_timeout_s())
        for rank, (node, _) in zip(self.actors, where, strict=True):
            self.node_ids[rank] = node
        for rank, actor in self.actors.items():  # each blocks in the rendezvous until the engine core joins
            self._pending.append((rank, actor.start.remote(self.raw_cfg, rank, host, store.port, self.world_size,
                                                           self.cuda), True))
        self._join(cfg, store=store)

    def _placement_group(self, ray: Any) -> Any:
        from ray.util.placement_group import placement_group, remove_placement_group

        res = "GPU" if self.cuda else "CPU"
        have = ray.cluster_resources().get(res, 0)
        if have < self.world_size:
            raise ValueError(f"{FLAG}: --tensor-parallel-size {self.tp_size} x --pipeline-parallel-size "
                             f"{self.pp_size} needs {self.world_size} x {res} in the Ray cluster, which has {have:g}.")
        bundles = [{res: 1.0} for _ in range(self.world_size)]
        bundles[self.rank][f"node:{ray.util.get_node_ip_address()}"] = 0.001  # the engine core's rank: this node
        pg = placement_group(bundles, strategy="PACK")
        if not pg.wait(timeout_seconds=_PLACEMENT_TIMEOUT_S):
            remove_placement_group(pg)
            raise ValueError(f"{FLAG}: Ray could not place {self.world_size} ranks ({res}: 1 each, one on this node) "
                             f"within {_PLACEMENT_TIMEOUT_S:g} s; free resources or lower --tensor-parallel-size / "
                             f"--pipeline-parallel-size.")
        return pg

    def _reserve_driver_bundle(self, ray: Any) -> int | None:
        """Which node (and GPU) the engine core's bundle got: a short-lived actor in it reports them."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=self.rank)
        probe = ray.remote(_RayWorker).options(num_cpus=0 if self.cuda else 1, num_gpus=1 if self.cuda else 0,
                                                scheduling_strategy=strategy).remote()
        try:
            node, gpus = ray.get(probe.where.remote(), timeout=envs.dist_timeout_s())
        finally:
            ray.kill(probe)
        self.node_ids[self.rank] = node
        return gpus[0] if self.cuda and gpus else None

    def _device_index(self) -> int | None:
        return self._gpu

    # ------------------------------------------------------------------ liveness
    def _poll(self) -> None:
        import ray
        from ray.exceptions import RayActorError

        if not self._pending:
            return
        refs = [ref for _, ref, _ in self._pending]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done_set = set(done)
        still = []
        for rank, ref, is_start in self._pending:
            if ref not in done_set:
                still.append((rank, ref, is_start))
                continue
            try:
                value = ray.get(ref)
            except RayActorError as e:
                self._dead_ranks.setdefault(rank, f"died (its Ray actor is gone: {type(e).__name__})")
                continue
            except Exception as e:  # the call raised inside the actor
                self.errors.setdefault(rank, f"{type(e).__name__}: {e}")
                continue
            if is_start:
                msg = m.from_worker_decoder.decode(value)
                if isinstance(msg, m.WorkerFailed):
                    self.errors[rank] = msg.error
                else:
                    self.ready[rank] = msg.num_blocks
        self._pending = still

    def _dead(self) -> list[tuple[int, str]]:
        self._poll()
        return sorted(self._dead_ranks.items())

    def _send(self, raw: bytes) -> None:
        for rank, actor in self.actors.items():
            self._pending.append((rank, actor.handle.remote(raw), False))

    def shutdown(self) -> None:
        self._finalizer()


def _timedelta(seconds: float) -> Any:
    import datetime

    return datetime.timedelta(seconds=seconds)


def _stop(actors: dict[int, Any], pg: Any, own_ray: bool) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    if not ray.is_initialized():
        return
    stop = m.encoder.encode(m.StopWorker())
    refs = []
    for actor in actors.values():
        try:
            refs += [actor.handle.remote(stop), actor.stop.remote()]
        except Exception:  # noqa: BLE001 - a dead actor: nothing to stop
            pass
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=5.0)
    for actor in actors.values():
        ray.kill(actor)
    destroy_tp_group()
    remove_placement_group(pg)
    if own_ray:
        ray.shutdown()
