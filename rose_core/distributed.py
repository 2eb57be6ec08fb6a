"""Fitting ROSE across processes and machines with ``torch.distributed`` (launched by ``torchrun``).

Nothing here is a process pool or socket code of its own: processes are started
by ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/
``MASTER_PORT``), and they talk through ``torch.distributed`` collectives.

* :func:`init_distributed` joins the process group when the environment says
  there is more than one process and returns a :class:`DistContext`; with a
  single process (no ``torchrun``, or ``--nproc_per_node 1``) nothing is
  initialised and every collective of the context is a no-op, so single-process
  code paths run exactly as before. The backend is ``nccl`` when the process
  computes on a CUDA device and ``gloo`` on the CPU.
* :func:`fit_scorer` fits a :class:`~rose_core.scorers.rose.RoseScorer` on
  images that every rank can see, each rank working on its own shard:

  1. the in-distribution images are split into the Fisher set and the
     normalisation set by their *global* index, exactly as
     :meth:`RoseScorer.fit` splits its stream (:func:`~rose_core.scorers.rose.split_mask`),
     and each set is cut into one contiguous block per rank *on the one-process
     batch grid* (whole batches of ``scorer.batch_size``; :func:`shard_range`),
     so each rank computes exactly the batches a single process would;
  2. every Fisher pass (DIAG: one; EKFAC: the Kronecker factors, then the
     eigenvalue corrections in the fixed eigenbasis) accumulates the rank's
     sums and counts, then all-reduces (SUM) :meth:`LayerwiseFisher.accumulators`
     before :meth:`~LayerwiseFisher.end_pass`; what ``end_pass`` derives from
     the sums (EKFAC's eigenbases) is compared across ranks by a hash and, where
     it differs (heterogeneous clusters), replaced by rank 0's, so every rank
     holds bit-identical eigenbases;
  3. the normalisation statistics are sums too: count and ``Σ s`` give the
     mean, then ``Σ (s − mean)²`` gives the (population) standard deviation —
     two all-reduces instead of one over ``Σ s²``, which avoids cancellation;
  4. the normalisation split's raw layer scores (``n_norm × L`` float64, small)
     are gathered in global order: they are the in-distribution calibration
     scores for the verdict threshold and ``scorer.norm_layer_raw``.

  The fit is one implementation, :meth:`RoseScorer.fit_sets`, for one process and
  many. Every per-batch statistic (Fisher sums, normalisation sums) is formed in
  float64 from the float32 factors, and the ranks compute the batches of the
  one-process grid, so one process and N processes differ only in the order of
  float64 additions: fit tensors agree to about 1e-12 relative (checked to
  1e-9 in ``tests/test_distributed.py``). A different *batch size* changes the
  float32 forward/backward kernels and hence the factors themselves, by
  float32 rounding (~1e-6 relative). Layers fitted on fewer images than their
  factors' dimensions (a null space with an arbitrary eigenbasis) are rank-deficient and
  are warned about (:class:`~rose_core.scorers.rose.RankDeficientFitWarning`),
  because there even float64 rounding can rotate the basis. A rank whose shard is empty
  still joins every collective with zero sums (its statistics are initialised
  from one blank image and zeroed), so more ranks than images neither hangs nor
  changes the result.

Bad input is discovered on every rank alike where possible; :meth:`DistContext.agree`
turns an error on some ranks into an error on all of them, so no rank waits
forever in a collective the others never reach.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from rose_core.errors import InvalidInput, RoseError

__all__ = ["DistContext", "DistributedError", "init_distributed", "shutdown", "shard_range", "pick_device",
           "fit_scorer", "fit_work", "end_pass_everywhere", "env_world_size"]

Progress = Callable[[int], None]
"""``progress(images_done)``: called after each batch with the number of images it held."""


class DistributedError(RoseError):
    """Another rank failed, or the ranks disagree about their inputs."""


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by ``torchrun``)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def pick_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:<local_rank>`` when CUDA is available, else the CPU; otherwise ``spec``.

    A bare ``"cuda"`` becomes ``cuda:<local_rank>`` so that the processes of one machine use
    one GPU each.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInput("--device cuda was asked for, but CUDA is not available here.")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return dev


def shard_range(n: int, rank: int, world_size: int, unit: int = 1) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of ``n`` items that ``rank`` of ``world_size`` works on.

    The items are cut in units of ``unit`` items (batches; the last may be short), and the units are
    spread so that blocks differ by at most one unit; ranks beyond the number of units get empty
    blocks. Cutting on the one-process batch grid means every rank computes exactly the batches a
    single process would, so per-batch float32 statistics are bit-identical to a one-process run.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}.")
    if unit < 1:
        raise ValueError(f"unit must be >= 1, got {unit}.")
    units = -(-n // unit)
    lo, hi = rank * units // world_size, (rank + 1) * units // world_size
    return min(lo * unit, n), min(hi * unit, n)


@dataclass
class DistContext:
    """Where this process stands: rank, world size, device, backend. Collectives are no-ops for one process.

    Build it with :func:`init_distributed`; ``DistContext()`` is the single-process context.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """The device the model computes on (CUDA tensors take part in ``nccl`` collectives)."""
    backend: str | None = None
    """``"gloo"``, ``"nccl"`` or ``None`` (no process group: a single process)."""
    owns_group: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def describe(self) -> str:
        if not self.is_distributed:
            return f"1 process ({self.device})"
        return f"{self.world_size} processes ({self.backend}, {self.device.type})"

    # --- collectives -------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def all_reduce_sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over all ranks, in place (one collective for all of them, in float64).

        Every rank must pass tensors of the same shapes in the same order; this is checked
        first (a mismatch raises :class:`DistributedError` instead of corrupting or hanging).
        """
        if not self.is_distributed or not tensors:
            return
        self.check_same([(tuple(t.shape), str(t.dtype)) for t in tensors], "the shapes of the summed statistics")
        flat = torch.cat([t.detach().reshape(-1).to(self._comm_device, torch.float64) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        self._unflatten(flat, tensors)

    def sum_int(self, value: int) -> int:
        """``value`` summed over the ranks (itself with one process)."""
        if not self.is_distributed:
            return int(value)
        t = torch.tensor([float(value)], dtype=torch.float64)
        self.all_reduce_sum_([t])
        return int(t.item())

    def broadcast_(self, tensors: Sequence[torch.Tensor], src: int = 0) -> None:
        """Overwrite each tensor with rank ``src``'s values, in place (floating-point tensors, one collective)."""
        if not self.is_distributed or not tensors:
            return
        self.check_same([(tuple(t.shape), str(t.dtype)) for t in tensors], "the shapes of the broadcast state")
        flat = torch.cat([t.detach().reshape(-1).to(self._comm_device, torch.float64) for t in tensors])
        dist.broadcast(flat, src=src)
        self._unflatten(flat, tensors)

    @staticmethod
    def _unflatten(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
        offset = 0
        with torch.no_grad():
            for t in tensors:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view(t.shape).to(t.device, t.dtype))
                offset += n

    def all_gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``(n_rank, ...)`` tensor in rank order (sizes may differ, even be 0)."""
        if not self.is_distributed:
            return x
        rest = tuple(x.shape[1:])
        self.check_same([rest, str(x.dtype)], "the row shape of gathered tensors")
        n = torch.tensor([x.shape[0]], dtype=torch.int64, device=self._comm_device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        sizes_i = [int(s) for s in sizes]
        m = max(sizes_i)
        padded = torch.zeros((m,) + rest, dtype=x.dtype, device=self._comm_device)
        padded[:x.shape[0]] = x.to(self._comm_device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes_i)]).to(x.device)

    def _gather_ints(self, values: Sequence[int]) -> list[list[int]]:
        t = torch.tensor(list(values), dtype=torch.int64, device=self._comm_device)
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.tolist() for o in out]

    def all_gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        """Every rank's ``values`` (same length everywhere), in rank order."""
        if not self.is_distributed:
            return [list(map(float, values))]
        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device)
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.tolist() for o in out]

    def same_tensors(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Collective: True when every rank holds bit-identical ``tensors`` (compared by a hash)."""
        if not self.is_distributed:
            return True
        h = hashlib.blake2b(digest_size=8)
        for t in tensors:
            h.update(repr((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
        value = int.from_bytes(h.digest(), "little", signed=True)
        return len({v[0] for v in self._gather_ints([value])}) == 1

    def check_same(self, value: object, what: str) -> None:
        """Raise :class:`DistributedError` on every rank unless all ranks hold the same ``value`` (by its repr)."""
        if not self.is_distributed:
            return
        digest = hashlib.sha256(repr(value).encode()).digest()
        h = int.from_bytes(digest[:8], "little", signed=True)
        hashes = [v[0] for v in self._gather_ints([h])]
        if len(set(hashes)) > 1:
            groups = {}
            for r, v in enumerate(hashes):
                groups.setdefault(v, []).append(r)
            raise DistributedError(f"The ranks disagree about {what} (groups of ranks: "
                                   f"{sorted(groups.values())}); every rank must see the same inputs "
                                   "(a shared filesystem, identical files and options).")

    def check_same_keys(self, keys: Sequence[object], what: str) -> None:
        """Like :meth:`check_same` for a long sequence: compares a streaming hash and the count."""
        if not self.is_distributed:
            return
        h = hashlib.sha256()
        for k in keys:
            h.update(repr(k).encode())
            h.update(b"\0")
        self.check_same((len(keys), h.hexdigest()), what)

    def agree(self, error: BaseException | None) -> None:
        """Collective: if any rank passes an error, every rank raises (its own error, or a
        :class:`DistributedError` naming the failed ranks). Call it on every rank."""
        if not self.is_distributed:
            if error is not None:
                raise error
            return
        flags = [v[0] for v in self._gather_ints([0 if error is None else 1])]
        if error is not None:
            raise error
        failed = [r for r, f in enumerate(flags) if f]
        if failed:
            raise DistributedError(f"rank(s) {failed} failed (see their messages); rank {self.rank} stops too.")


def init_distributed(device: str = "auto", backend: str = "auto", *, rank: int | None = None,
                     world_size: int | None = None, init_method: str | None = None,
                     timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group if there is more than one process; return the :class:`DistContext`.

    ``rank``/``world_size`` default to ``RANK``/``WORLD_SIZE`` (set by ``torchrun``);
    ``init_method`` defaults to ``env://`` (``MASTER_ADDR``/``MASTER_PORT``); tests may pass
    ``file:///tmp/…``. ``backend="auto"``: ``nccl`` when the device is CUDA, else ``gloo``.
    With a single process nothing is initialised. An already initialised default group is
    reused (and not destroyed by :func:`shutdown`).
    """
    env = os.environ
    rank = int(env.get("RANK", "0")) if rank is None else int(rank)
    world_size = env_world_size() if world_size is None else int(world_size)
    local_rank = int(env.get("LOCAL_RANK", rank if world_size > 1 else 0))
    local_world = int(env.get("LOCAL_WORLD_SIZE", world_size))
    dev = pick_device(device, local_rank)
    if world_size <= 1:
        return DistContext(device=dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise InvalidInput("The nccl backend needs CUDA devices; use --device cuda or the gloo backend.")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        kwargs = dict(backend=backend, timeout=_dt.timedelta(minutes=timeout_minutes), rank=rank,
                      world_size=world_size, init_method=init_method or "env://")
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        owns = True
    else:
        backend = dist.get_backend()
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_world,
                       device=dev, backend=backend, owns_group=owns)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        ctx.owns_group = False


# ------------------------------------------------------------------------------------------------
# Distributed ROSE fit
# ------------------------------------------------------------------------------------------------

def end_pass_everywhere(fisher, ctx: "DistContext", device: torch.device) -> None:
    """End a Fisher pass on every rank: all-reduce (SUM) the pass's accumulators, then
    ``end_pass``; what ``end_pass`` derives from the sums (EKFAC's eigenbases) is compared across
    ranks by a hash and, where it differs (heterogeneous clusters), replaced by rank 0's
    (``device``: where the fit's statistics live)."""
    accs = fisher.accumulators()
    ctx.all_reduce_sum_([accs[k] for k in sorted(accs)])
    before = {(name, k): id(t) for name, st in fisher.state.items() for k, t in st.items()}
    fisher.end_pass()
    if not ctx.is_distributed:
        return
    derived = [t for name, st in sorted(fisher.state.items()) for k, t in sorted(st.items())
               if t.is_floating_point() and before.get((name, k)) != id(t)]
    if derived and not ctx.same_tensors(derived):
        ctx.broadcast_(derived)
        fisher.to(device)  # clears derived caches after the in-place update


def _batches(images, idx: np.ndarray, batch_size: int, device: torch.device, dtype: torch.dtype):
    """Model-input batches of ``images[idx]``: uint8 ``(N, H, W, C)`` arrays are converted per batch,
    float tensors ``(N, C, H, W)`` are sliced."""
    from rose_core.scorers.base import check_batch

    for i in range(0, len(idx), batch_size):
        sel = idx[i:i + batch_size]
        if torch.is_tensor(images):
            xb = images[torch.as_tensor(sel, dtype=torch.long)]
        else:
            xb = torch.from_numpy(np.ascontiguousarray(images[sel])).permute(0, 3, 1, 2).float().div_(255.0)
        yield check_batch(xb.to(device, dtype))


def _split_indices(n: int, scorer, n_calibration: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from rose_core.scorers.rose import split_mask

    if n_calibration:
        return np.arange(n), np.arange(n_calibration)
    if scorer.normalization == "same":
        all_idx = np.arange(n)
        return all_idx, all_idx
    mask = split_mask(0, n, scorer.fit_fraction).numpy()
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def _my_shards(n: int, scorer, ctx: DistContext, n_calibration: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """This rank's Fisher and normalisation images (global indices), cut on the batch grid."""
    fisher_idx, norm_idx = _split_indices(n, scorer, n_calibration)
    lo, hi = shard_range(len(fisher_idx), ctx.rank, ctx.world_size, unit=scorer.batch_size)
    lo2, hi2 = shard_range(len(norm_idx), ctx.rank, ctx.world_size, unit=scorer.batch_size)
    return fisher_idx[lo:hi], norm_idx[lo2:hi2]


def fit_work(n_images: int, scorer, ctx: DistContext | None = None, n_calibration: int = 0) -> int:
    """How many images this rank pushes through the model in :func:`fit_scorer` (for a progress bar)."""
    ctx = ctx or DistContext()
    my_fisher, my_norm = _my_shards(n_images, scorer, ctx, n_calibration)
    from rose_core.fisher import FISHER_KINDS

    return len(my_fisher) * FISHER_KINDS[scorer.fisher_kind].passes + len(my_norm)


def fit_scorer(scorer, images, ctx: DistContext | None = None, progress: Progress | None = None,
               calibration=None) -> np.ndarray:
    """Fit ``scorer`` (a :class:`RoseScorer`) on ``images``; returns the calibration scores.

    ``images`` (and ``calibration``, optional: separate in-distribution images for the
    z-normalisation and the verdict calibration, see :meth:`RoseScorer.fit`): the *whole* sets,
    identical on every rank — uint8 ``(N, H, W, C)`` already prepared for the model
    (:func:`rose_core.data.prepare_images`) or float tensors ``(N, C, H, W)`` in [0, 1]. Each rank
    takes its shard (see the module docstring) and :meth:`RoseScorer.fit_sets` — the one fit —
    sums over the ranks. Afterwards every rank holds the same fitted scorer.
    """
    ctx = ctx or DistContext()
    n_cal = 0 if calibration is None else len(calibration)
    my_fisher, my_norm = _my_shards(len(images), scorer, ctx, n_cal)
    norm_images = images if calibration is None else calibration
    bs = scorer.batch_size

    def source(data, idx):
        return lambda: _batches(data, idx, bs, scorer.device, scorer.dtype)

    scorer.fit_sets((source(images, my_fisher), "all"), (source(norm_images, my_norm), "all"),
                    calibrated=calibration is not None, ctx=ctx, progress=progress)
    return scorer.calibration_scores
