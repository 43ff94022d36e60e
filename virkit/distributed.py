"""One training run on several devices: ``torchrun --nproc-per-node N -m virkit train ...``.

:func:`setup` looks at the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) and, when ``WORLD_SIZE > 1``, joins the process group (``nccl`` on
CUDA, ``gloo`` on CPU) and returns a :class:`DistContext` that the trainer consults; without
torchrun it returns a single-process context whose every method is a no-op, so
:func:`virkit.training.trainer.train` has one code path.

What a distributed run does (docs/SCALE_OUT.md has the long form):

* ``batch_size`` is the GLOBAL batch (the paper's 128); each of the W ranks trains on
  ``batch_size / W`` examples a step (an error if W does not divide it). Every rank draws the same
  seeded epoch permutation and the same augmentation for the whole global batch, then keeps its
  contiguous slice (:func:`shard_bounds`), so the union of the ranks' shards of a step is exactly
  the single-process batch. A last partial batch is split as evenly as possible; if it has fewer
  examples than ranks it is dropped (on every rank).
* Each rank crafts the training attack for its own shard, with the local model in eval mode and no
  communication; attack random starts come from a per-rank generator (rank 0 uses the
  single-process seed). Per-example weights are computed locally from local logits.
* The training forward/backward goes through :class:`TrainForwardDDP` (DistributedDataParallel
  for train-mode forwards with gradients; eval-mode and no-grad forwards call the local module).
  The local loss is scaled (:meth:`DistContext.loss_scale`) so that DDP's gradient average equals
  the gradient of the single-process loss over the global batch, for ``batch_reduction`` mean and
  sum, even when the shards of a last partial batch differ in size.
* Per-class weight sums/counts, min/max weight, loss and accuracy sums and the example count are
  all-reduced at the end of each epoch, so ``history.jsonl`` describes the global batch.
* BatchNorm: by default each rank normalises with the statistics of its own shard (plain DDP;
  running statistics are broadcast from rank 0 before every training forward, so every rank crafts
  with rank 0's). ``--sync-bn`` converts BatchNorm to SyncBatchNorm (statistics over the global
  batch, as in a single-process run; CUDA only, SyncBatchNorm has no CPU kernel).
* Normalisations over the batch inside a method (GAIRAT's weight mean 1, ``weight_norm=mean1``)
  are over the rank's shard, not the global batch.
* Only rank 0 touches files: it decides new/resume/reuse/overwrite (and every rank follows it),
  writes config.json, history.jsonl, the checkpoints, summary.json and runs the per-epoch held-out
  evaluation and the final evaluation; the others wait (for the final evaluation they just
  finish). On resume rank 0 reads ``last.pt`` and broadcasts it, so other nodes need not see the
  run directory.
* Errors that can happen on one rank only (a write failing, a non-finite loss in one shard) are
  agreed on by collective calls, so every rank raises the same error and the launch ends cleanly.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from virkit.devices import resolve_device
from virkit.errors import VirkitError

__all__ = ["DistContext", "setup", "launched_by_torchrun", "shard_bounds", "TrainForwardDDP", "SYNC_BN_ENV"]

SYNC_BN_ENV = "VIRKIT_SYNC_BN"  # "1": SyncBatchNorm (what --sync-bn sets)
BACKEND_ENV = "VIRKIT_DIST_BACKEND"  # force nccl/gloo (default: nccl on CUDA, gloo on CPU)
TIMEOUT_ENV = "VIRKIT_DIST_TIMEOUT_MIN"  # collective timeout in minutes (default 60: rank 0's held-out eval)
_RANK_SEED_STRIDE = 1_000_000_007


def launched_by_torchrun(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank`` in a batch of ``n``: contiguous slices whose sizes differ by at
    most one, in rank order, covering the batch exactly once."""
    base, rest = divmod(n, world_size)
    lo = rank * base + min(rank, rest)
    return lo, lo + base + (1 if rank < rest else 0)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class DistContext:
    """Where this process stands in a run. ``world_size == 1``: a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    backend: str | None = None
    sync_bn: bool = False
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "sync_bn": self.sync_bn,
            "launcher": "torchrun" if self.enabled else None,
        }

    # ------------------------------------------------------------------ model and loss
    def prepare_model(self, model: nn.Module, log: Callable[[str], None]) -> nn.Module:
        """SyncBatchNorm conversion (``sync_bn``); same parameters and state-dict keys as before."""
        if not (self.enabled and self.sync_bn):
            return model
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if not has_bn:
            log("--sync-bn: the model has no BatchNorm layer; nothing to synchronise")
            return model
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: :class:`TrainForwardDDP` around ``model``, or
        ``model`` itself in a single-process run."""
        if not self.enabled:
            return model
        kwargs: dict[str, Any] = {}
        if self.sync_bn:  # SyncBatchNorm keeps the running statistics equal on every rank: no broadcast
            import inspect

            params = inspect.signature(_DDP.__init__).parameters
            kwargs["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = False
        if self.device is not None and self.device.type == "cuda":
            kwargs.update(device_ids=[self.device.index], output_device=self.device.index)
        return TrainForwardDDP(model, **kwargs)

    def loss_scale(self, n_local: int, n_global: int, reduction: str) -> float:
        """Factor on the local (shard) loss so that DDP's average of the ranks' gradients is the
        gradient of the single-process loss on the global batch: ``W * n_local / n_global`` for a
        mean over the batch, ``W`` for a sum."""
        if not self.enabled:
            return 1.0
        if reduction == "sum":
            return float(self.world_size)
        return self.world_size * n_local / max(n_global, 1)

    def rank_seed(self, seed: int) -> int:
        """Seed of this rank's attack generator: rank 0 keeps the single-process seed."""
        return (seed + self.rank * _RANK_SEED_STRIDE) % (2**62)

    # ------------------------------------------------------------------ collectives
    def all_reduce_(self, *tensors: torch.Tensor, op: str = "sum") -> None:
        """In-place all-reduce (``sum``, ``min`` or ``max``) of each tensor; no-op on one process."""
        if not self.enabled:
            return
        import torch.distributed as dist

        red = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
        for t in tensors:
            dist.all_reduce(t, op=red)

    def sum_int(self, value: int) -> int:
        if not self.enabled:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self._coll_device())
        self.all_reduce_(t)
        return int(t.item())

    def first_bad_step(self, bad_step: torch.Tensor) -> torch.Tensor:
        """The earliest step (``-1``: none) at which any rank saw a non-finite loss; the same value
        on every rank, so all ranks stop together."""
        if not self.enabled:
            return bad_step
        big = torch.iinfo(torch.int64).max
        t = torch.where(bad_step >= 0, bad_step, torch.full_like(bad_step, big)).reshape(1).clone()
        self.all_reduce_(t, op="min")
        return torch.where(t == big, torch.full_like(t, -1), t).reshape(bad_step.shape)

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._coll_device() if self.backend == "nccl" else None)
        return box[0]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only and give its result to every rank. If it raises, every rank
        raises the same :class:`VirkitError` (rank 0 re-raises its own exception)."""
        if not self.enabled:
            return fn()
        result, err, exc = None, None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:
                exc, err = e, _describe(e)
        status = self.broadcast_object((err, result))
        if status[0] is not None:
            if exc is not None:
                raise exc
            raise VirkitError(f"rank 0: {status[0]}")
        return status[1]

    def raise_if_main_failed(self, exc: BaseException | None) -> None:
        """Every rank raises when rank 0 passes an exception (from a step only rank 0 runs)."""
        if not self.enabled:
            if exc is not None:
                raise exc
            return
        msg = self.broadcast_object(_describe(exc) if (self.is_main and exc is not None) else None)
        if msg is not None:
            if exc is not None:
                raise exc
            raise VirkitError(f"rank 0: {msg}")

    def everywhere(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; if it fails on any rank, every rank raises (the failing ranks
        their own exception, the others a VirkitError naming the first failing rank)."""
        if not self.enabled:
            return fn()
        import torch.distributed as dist

        result, exc = None, None
        try:
            result = fn()
        except Exception as e:
            exc = e
        errors: list = [None] * self.world_size
        dist.all_gather_object(errors, _describe(exc) if exc is not None else None)
        if exc is not None:
            raise exc
        for r, msg in enumerate(errors):
            if msg is not None:
                raise VirkitError(f"rank {r}: {msg}")
        return result

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def close(self) -> None:
        """Leave the process group if :func:`setup` created it. Every rank must call it at the same
        point (a barrier first): a rank tearing its group down while another still holds its own
        can abort the process at exit. Drop the DDP-wrapped model first: its reducer holds the group,
        and a gloo group outliving ``destroy_process_group`` until interpreter exit can abort the
        process there ("terminate called without an active exception", seen once in CI)."""
        if self.owns_group:
            import gc

            import torch.distributed as dist

            gc.collect()  # a DDP module the caller has let go of, freed now (it may sit in a reference cycle)
            if dist.is_initialized():
                self.barrier()
                dist.destroy_process_group()
            self.owns_group = False

    def _coll_device(self) -> torch.device:
        return self.device if (self.backend == "nccl" and self.device is not None) else torch.device("cpu")


def _describe(e: BaseException | None) -> str | None:
    if e is None:
        return None
    return str(e) if isinstance(e, VirkitError) else f"{type(e).__name__}: {e}"


if torch.distributed.is_available():
    from torch.nn.parallel import DistributedDataParallel as _DDP

    class TrainForwardDDP(_DDP):
        """DistributedDataParallel for the training forwards only.

        A forward in train mode with gradients enabled is DDP's (gradients all-reduced in the
        backward, buffers broadcast from rank 0). Every other forward (the attack crafting in eval
        mode, whose gradient is taken with respect to the input only; no-grad forwards for the
        weights) calls the wrapped module directly: those are local computations, and routing them
        through DDP would arm its reducer for a backward that never reaches the parameters."""

        def forward(self, *inputs, **kwargs):
            if self.training and self.module.training and torch.is_grad_enabled():
                return super().forward(*inputs, **kwargs)
            return self.module(*inputs, **kwargs)
else:  # pragma: no cover - builds without torch.distributed
    TrainForwardDDP = None  # type: ignore[assignment]


def _resolve_device(device: str, local_rank: int) -> torch.device:
    """Under torchrun each process takes ``cuda:LOCAL_RANK`` (or the CPU, for gloo)."""
    if device not in ("cpu", "auto", "cuda"):
        raise VirkitError(
            f"--device {device!r} cannot be used with torchrun: each process takes cuda:LOCAL_RANK "
            "(use --device auto or cuda, or cpu for gloo on the CPU)"
        )
    dev = resolve_device(device, local_rank=local_rank)
    if dev.type == "cuda" and local_rank >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise VirkitError(
            f"LOCAL_RANK={local_rank} but this machine has {n} CUDA device(s); use --nproc-per-node {n} or fewer"
        )
    return dev


def setup(
    device: str = "auto",
    batch_size: int | None = None,
    sync_bn: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> DistContext:
    """A :class:`DistContext` for this process. Joins the process group when launched by torchrun
    with ``WORLD_SIZE > 1`` (reusing one already initialised), else returns a single-process context.

    ``batch_size`` (global) must be divisible by the world size. ``sync_bn`` (default: the
    ``VIRKIT_SYNC_BN`` variable, which ``--sync-bn`` sets) asks for SyncBatchNorm.
    """
    log = log or (lambda s: None)
    sync_bn = _env_flag(SYNC_BN_ENV) if sync_bn is None else bool(sync_bn)
    if not launched_by_torchrun() or os.environ.get("WORLD_SIZE", "1").strip() in ("1", ""):
        if sync_bn:
            log("--sync-bn has no effect in a single-process run (launch with torchrun for several processes)")
        return DistContext(sync_bn=False)
    try:
        rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise VirkitError("RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun)") from None
    if not torch.distributed.is_available():  # pragma: no cover
        raise VirkitError("this PyTorch build has no torch.distributed; run without torchrun")
    import torch.distributed as dist

    dev = _resolve_device(device, local_rank)
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if dev.type == "cuda" else "gloo")
    if backend not in ("nccl", "gloo"):
        raise VirkitError(f"{BACKEND_ENV}={backend!r}; use nccl or gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise VirkitError(f"{BACKEND_ENV}=nccl needs CUDA devices; use gloo on the CPU")
    if sync_bn and dev.type != "cuda":
        raise VirkitError(
            "--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); drop "
            "--sync-bn for a CPU run (each process then normalises over its own shard)"
        )
    if batch_size is not None and batch_size % world:  # the same on every rank: all raise, before joining
        raise VirkitError(
            f"batch_size={batch_size} is the global batch and must be divisible by the number of "
            f"processes ({world}); each process trains on batch_size/{world} examples a step; use "
            f"e.g. --batch-size {max(world, batch_size // world * world)}"
        )
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, "60"))
        kwargs: dict[str, Any] = {
            "backend": backend,
            "init_method": "env://",
            "rank": rank,
            "world_size": world,
            "timeout": datetime.timedelta(minutes=minutes),
        }
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        owns = True
        atexit.register(_destroy_quietly)
    elif dist.get_world_size() != world:
        raise VirkitError(f"a process group of {dist.get_world_size()} ranks exists but WORLD_SIZE={world}")
    ctx = DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        device=dev,
        backend=backend,
        sync_bn=sync_bn,
        owns_group=owns,
    )
    if ctx.is_main:
        log(
            f"distributed: {world} processes ({backend}), {batch_size // world if batch_size else '?'} examples per "
            f"process a step, BatchNorm {'synchronised (SyncBatchNorm)' if sync_bn else 'per process'}"
        )
    return ctx


def _destroy_quietly() -> None:
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass
