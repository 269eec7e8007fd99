r"""Data-parallel training under ``torchrun``: process group, DDP, the data split, rank 0 writes.

``torchrun --nproc_per_node=N -m nysact.train …`` (or ``torchrun … $(which nysact-train) …``)
starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous in their
environment. :func:`init_distributed` reads them and initializes the process group — ``nccl``
on CUDA (process ``LOCAL_RANK`` on GPU ``LOCAL_RANK``, one process per device), ``gloo`` on the
CPU — with the timeout ``NYSACT_DIST_TIMEOUT`` (seconds, default 1800), so that a stuck rank
fails instead of hanging. Without torchrun it returns a single-process environment and nothing
changes. The nysact optimizers detect the process group themselves
(:mod:`nysact.optim.distributed`): statistics averaged in one all-reduce per statistics step,
inverse refreshes spread over the ranks.

Decisions (the issue is silent on them):

* ``batch_size`` is the **global** batch: each of the N ranks takes ``batch_size / N`` samples
  (it must divide), so the learning rate and the schedule mean the same at any N, and N
  processes reproduce the single-process run up to the order of floating-point sums.
* The split is ``DistributedSampler``'s: the epoch's permutation (the same generator on every
  rank) is padded by wrapping around to a multiple of N and rank r takes every N-th index from
  r (:meth:`DistributedEnv.shard`). Rank r's k-th batch is then exactly its part of the
  single-process run's k-th batch, and every rank has the same number of steps (DDP needs
  that). The repeated-augmentation sampler splits itself (``num_replicas``, ``rank``).
* Evaluation is split the same way without padding and the sums of loss, correct answers and
  samples are all-reduced: every rank gets the whole test set's metrics. The train metrics are
  summed over the ranks the same way.
* Augmentation and stochastic layers (dropout, drop path) draw from streams seeded per rank
  (:meth:`DistributedEnv.rank_seed`; rank 0 keeps the single-process seeds), so that ranks do
  not apply identical random transformations to different images.
* Only rank 0 writes ``metrics.jsonl``, ``config.json``, TensorBoard scalars and the
  checkpoint (atomically, :func:`nysact.train.checkpoint.save_checkpoint`); the checkpoint
  holds every rank's RNG states (:meth:`DistributedEnv.gather_rng`), so ``--resume`` under
  torchrun continues each rank's streams exactly. Peak memory and phase times in the metrics
  are rank 0's.
"""

from __future__ import annotations

import gc
import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist

__all__ = ["DistributedEnv", "init_distributed", "launched_by_torchrun", "shutdown_distributed"]

_TIMEOUT_ENV = "NYSACT_DIST_TIMEOUT"
_created_here = False  # whether init_distributed created the process group


def launched_by_torchrun() -> bool:
    """Whether the torchrun (``torch.distributed.run``) environment variables are set.

    Returns
    -------
    bool
        True when ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR`` are all set.
    """
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


@dataclass(frozen=True)
class DistributedEnv:
    """The place of this process in a data-parallel run (a single process by default).

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of processes and rank on this machine.
    device : torch.device or None
        The device of this process (None in a single process: the caller decides).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def active(self) -> bool:
        """Whether more than one process trains (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes files and prints."""
        return self.rank == 0

    def rank_seed(self, seed: int) -> int:
        """Return ``seed`` for rank 0, ``seed + 1000003·rank`` for the others.

        Parameters
        ----------
        seed : int
            The single-process seed of a random stream.

        Returns
        -------
        int
            This rank's seed (independent streams per rank; rank 0 unchanged).
        """
        return seed + 1_000_003 * self.rank

    def local_batch(self, batch_size: int) -> int:
        """Return the rank's share ``batch_size / N`` of the global batch.

        Parameters
        ----------
        batch_size : int
            The global batch.

        Returns
        -------
        int
            ``batch_size / N``.

        Raises
        ------
        ValueError
            If N does not divide ``batch_size``.
        """
        if batch_size % self.world_size:
            raise ValueError(
                f"Invalid batch_size: {batch_size} is the global batch and must be divisible "
                f"by the number of processes ({self.world_size})"
            )
        return batch_size // self.world_size

    def shard_len(self, n: int) -> int:
        """Return the length of a rank's padded share of n samples.

        Parameters
        ----------
        n : int
            Samples in the epoch.

        Returns
        -------
        int
            ``⌈n / N⌉``.
        """
        return -(-n // self.world_size)

    def shard(self, order: Tensor) -> Tensor:
        """Return the rank's share of an epoch's index order, ``DistributedSampler``-style.

        The order is padded by wrapping around to ``N·⌈n/N⌉`` entries and rank r takes entries
        ``r, r + N, r + 2N, …``.

        Parameters
        ----------
        order : Tensor
            The epoch's indices (1-D), identical on every rank.

        Returns
        -------
        Tensor
            ``⌈n / N⌉`` indices.
        """
        n, total = order.numel(), self.shard_len(order.numel()) * self.world_size
        if total > n and n > 0:
            order = torch.cat([order, order.repeat(-(-(total - n) // n))[: total - n]])
        return order[self.rank : total : self.world_size]

    def shard_eval(self, order: Tensor) -> Tensor:
        """Return the rank's share for evaluation: entries ``r, r + N, …`` without padding.

        Parameters
        ----------
        order : Tensor
            The indices (1-D).

        Returns
        -------
        Tensor
            The rank's entries; the shares of all ranks partition ``order``.
        """
        return order[self.rank :: self.world_size]

    def _comm_device(self) -> torch.device:
        if str(dist.get_backend()) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_sum(self, *values: float) -> tuple[float, ...]:
        """Sum each value over the ranks (one float64 all-reduce).

        Parameters
        ----------
        *values : float
            This rank's values.

        Returns
        -------
        tuple of float
            The sums over the ranks (the values themselves in a single process).
        """
        if not self.active:
            return tuple(float(v) for v in values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return tuple(float(v) for v in t.tolist())

    def wrap(self, model: nn.Module) -> nn.Module:
        """Wrap ``model`` for data-parallel training.

        Parameters
        ----------
        model : nn.Module
            The model, on this rank's device.

        Returns
        -------
        nn.Module
            ``DistributedDataParallel(model)`` when active, else ``model`` itself.
        """
        if not self.active:
            return model
        ids = (
            [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        )
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def gather_rng(self, state: dict[str, Any]) -> dict[str, Any]:
        """Collect every rank's RNG state for a checkpoint (a collective: call it on every rank).

        Parameters
        ----------
        state : dict
            This rank's :func:`nysact.train.checkpoint.rng_state`.

        Returns
        -------
        dict
            ``state`` itself in a single process, else ``{"per_rank": [state_0, …]}``.
        """
        if not self.active:
            return state
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, state)
        return {"per_rank": states}

    def rank_rng(self, saved: dict[str, Any]) -> dict[str, Any]:
        """Return the rank's RNG state from a checkpoint's (see :meth:`gather_rng`).

        Parameters
        ----------
        saved : dict
            The checkpoint's ``"rng"`` entry.

        Returns
        -------
        dict
            This rank's state; from a checkpoint of a different number of processes, rank 0's
            (the run continues, but not bit for bit); a single-process state as it is.
        """
        per_rank = saved.get("per_rank")
        if per_rank is None:
            return saved
        return dict(per_rank[self.rank] if len(per_rank) == self.world_size else per_rank[0])

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.active:
            dist.barrier()


def _timeout() -> timedelta:
    raw = os.environ.get(_TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"Invalid {_TIMEOUT_ENV}: {raw!r}. Must be a number of seconds.") from None
    if seconds <= 0:
        raise ValueError(f"Invalid {_TIMEOUT_ENV}: {raw!r}. Must be > 0.")
    return timedelta(seconds=seconds)


def _process_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Invalid device: {spec!r}: CUDA is not available on this machine")
        if device.index is None:
            if local_rank >= torch.cuda.device_count():
                raise ValueError(
                    f"LOCAL_RANK {local_rank} has no GPU of its own ({torch.cuda.device_count()} "
                    "visible): start at most one process per GPU"
                )
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto") -> DistributedEnv:
    """Join the torchrun process group (creating it if needed); a single process otherwise.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` (GPU ``LOCAL_RANK``) or
        ``"cuda:k"``; chooses the backend (``nccl`` on CUDA, ``gloo`` on the CPU).

    Returns
    -------
    DistributedEnv
        Rank, world size and this process's device; the default (single process, device
        None) without torchrun and without an initialized process group.

    Raises
    ------
    ValueError
        If CUDA is asked for but missing, a local rank has no GPU, or the timeout variable
        is invalid.
    """
    global _created_here
    initialized = dist.is_available() and dist.is_initialized()
    if not initialized and not launched_by_torchrun():
        return DistributedEnv()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _process_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not initialized:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"timeout": _timeout()}
        if (
            dev.type == "cuda"
            and "device_id" in inspect.signature(dist.init_process_group).parameters
        ):
            kwargs["device_id"] = dev  # NCCL binds this rank to its GPU (torch >= 2.3)
        dist.init_process_group(backend, **kwargs)
        _created_here = True
    return DistributedEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def shutdown_distributed() -> None:
    """Wait for every rank, then destroy the process group if :func:`init_distributed` made it.

    A garbage collection runs first: objects in reference cycles (a DDP wrapper and its
    reducer, the optimizer's hooks) that still hold the process group or pending gloo work are
    then freed while the interpreter is fully alive, not during its finalization, where
    destroying them can abort the process (pytorch/pytorch#179291 describes that crash).
    """
    global _created_here
    if _created_here and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    _created_here = False
