"""Layer-wise empirical Fisher approximations and the ROSE layer score ``s_l = gᵀ F_l⁻¹ g``.

Two approximations share one interface (:class:`LayerwiseFisher`):

* :class:`DiagFisher` (paper eq. 6): ``F = E[g²]`` elementwise; ``s = Σ g² / (F + λ)``.
* :class:`EkfacFisher` (George et al. 2018; paper eq. 7-9, Appendix A):
  ``A = E[h hᵀ]``, ``B = E[δ δᵀ]`` averaged over samples **and positions**
  (``h``: unfolded inputs per position with a 1 for a bias, ``δ``: gradient of
  the loss w.r.t. the layer output per position; see :mod:`rose_core.pergrad`),
  eigenbases ``U_A``, ``U_B`` by ``torch.linalg.eigh`` in float64,
  ``G̃ = U_Bᵀ G U_A`` for the per-sample gradient ``G`` (``C × D``),
  ``Σ = E[G̃²]`` over samples, and ``s = Σ_ij G̃_ij² / (Σ_ij + λ)``.
  This equals ``vec(G)ᵀ (U diag(vec Σ + λ) Uᵀ)⁻¹ vec(G)`` with ``U = U_A ⊗ U_B``
  and column-major ``vec`` (``(U_A ⊗ U_B)ᵀ vec(G) = vec(U_Bᵀ G U_A)``).

Damping is **relative**: ``λ = damping · mean(F)`` (DIAG) or ``damping · mean(Σ)``
(EKFAC), per layer, so scores do not change when the loss is multiplied by a
constant (the default ``damping = 1e-8`` only guards directions of zero variance).

Fitting is pass-based and every pass only **adds sums and counts**, so fits are
mergeable — across batches, processes or machines::

    fisher = EkfacFisher()
    for p in range(fisher.passes):              # DIAG: 1 pass, EKFAC: 2 passes
        for batch in fit_batches:
            fisher.update(stats_of(batch))      # {layer: LayerFactors}
        # distributed: for t in fisher.accumulators().values(): all_reduce(t)
        fisher.end_pass()

EKFAC's two phases: pass 0 accumulates ``Σ h hᵀ``, ``Σ δ δᵀ`` and their counts;
``end_pass`` computes the eigenbases from those sums; pass 1 accumulates
``Σ G̃²`` and the sample count in that fixed basis. Two partial fits merge
exactly (up to float64 rounding of the sums) into the full fit provided phase-1
sums are merged *before* the bases are computed and phase-2 sums are computed
in the same bases: ``a.merge(b)`` (phase 0) → ``a.end_pass()`` →
``a2, b2 = a.empty_like(), a.empty_like()`` → ``update`` each on its share →
``a2.merge(b2)`` → ``a2.end_pass()``. :meth:`merge` refuses fits whose earlier
results (eigenbases) differ. With ``torch.distributed``, all-reduce
:meth:`accumulators` (sum) before each ``end_pass``; ``eigh`` of identical sums
gives identical bases on identical hardware/software (broadcast ``U_A``/``U_B``
from one rank to be safe on heterogeneous clusters).

Precision and speed (the Fisher code is on ROSE's hot path): a batch's statistics are formed in
the compute dtype (float32 for a float32 model) — the input factor's Gram ``Σ h hᵀ`` (one BLAS
product per batch, the upper block triangle only when it is compute-bound: :func:`_gram64`), the
rank-one products ``(δ²)ᵀ h²`` and the squared (rotated) gradients, summed block by block — and
every batch sum is accumulated in float64, so rounding does not grow with the number of batches.
The output factor's Gram ``Σ δ δᵀ`` is formed in float64: it is small (``C`` is at most a few
hundred), and a latent the VAE does not use gives its log σ² head an output factor with eigenvalues
below float32's resolution, whose eigenvectors a float32 Gram leaves to rounding.
``benchmarks/bench_fit_precision.py`` measures what this changes on the shipped VAE with its
default 10,000 Fisher images, against float64 Grams (``results/benchmarks/fit-precision.json``,
shown in the README; ``tests/test_readme.py`` holds the shipped choice within 1e-4 relative on
every layer, the float32 rounding of the scores themselves). Below full rank (fewer Fisher images than a
factor's dimension, which the fit warns about) the scores depend on the rounding of the factors
whatever their precision. ``tests/test_fisher.py`` checks which statistics are float32 and which
float64 and bounds the difference from a float64 model's fit. A float64 model gets float64
statistics throughout (the exactness tests use one). Batches are the same for any number of
processes (sharding follows the batch grid), so one process and N processes differ only in the
order of float64 additions.
EKFAC rotates ``h`` and ``δ`` into the eigenbases *before* the batched product
when that is cheaper: rotating ``h`` first costs ``T·D²`` per sample versus
``C·D²`` for rotating ``G``; rotating ``δ`` first costs ``T·C²`` versus ``D·C²``
(``T`` positions). With a single position and no offset (the VAE's μ/log σ²
heads, linear layers) ``G`` is rank one and never materialised:
``s = (δ̃²)ᵀ (1/(Σ+λ)) (h̃²)`` and ``Σ`` sums as ``(δ̃²)ᵀ (h̃²)``; layers that read the
same input tensor and have bit-identical ``A`` (the μ and log σ² heads) share one
``eigh`` and one rotated ``h̃``. Otherwise the whole batch's ``h`` and ``δ`` are
rotated with one large matrix product each, then ``G̃`` is built block by block
(cache-sized on the CPU, bounded memory everywhere) and ``s`` is a
matrix-vector product of the squared block with ``1/(Σ+λ)``. ``h`` arrives as a
transposed view of a position-major ``(N, T, D)`` tensor (:func:`rose_core.pergrad.unfold`), so
rotating it is one ``(N·T, D) @ U_A`` product per batch, as is the Gram ``Σ h hᵀ``. Where the time
goes on the paper-size FMNIST VAE (preconditioning against the model's own forward and
activation-only backward): ``results/benchmarks/profile.txt``, written by
``benchmarks/bench_peers.py --profile``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping

import torch

from rose_core.errors import CheckpointError
from rose_core.pergrad import DEFAULT_CHUNK_ELEMENTS, LayerFactors, row_chunks

__all__ = ["LayerwiseFisher", "DiagFisher", "EkfacFisher", "make_fisher",
           "save_fisher", "load_fisher", "FISHER_KINDS"]

Stat = LayerFactors | torch.Tensor
"""A layer's statistics for a batch: its :class:`LayerFactors`, or dense per-sample gradients ``(N, C, D)``."""

_F64 = torch.float64
_EPS32 = float(torch.finfo(torch.float32).eps)


CPU_CHUNK_ELEMENTS = 1 << 18
"""Default block size (elements of ``(n, C, D)``) on the CPU: 1 MiB in float32, within one core's L2
cache, so the square and the weighted sum read the block the batched product has just written from
L2. Measured on the VAE's ``encoder.5`` (C = 128, D = 1024, T = 16, one thread, batch 128): 8.5 ms
against 13.4 ms with 4 MiB blocks (which were themselves about 1.7× faster than whole-batch blocks)."""


def _rank_one(stat: Stat) -> bool:
    return isinstance(stat, LayerFactors) and stat.offset is None and stat.positions == 1


def _shape_of(stat: Stat) -> tuple[int, int]:
    return stat.shape if isinstance(stat, LayerFactors) else (stat.shape[1], stat.shape[2])


def _device_dtype(stat: Stat) -> tuple[torch.dtype, torch.device]:
    t = stat.raw_grad if isinstance(stat, LayerFactors) else stat
    return t.dtype, t.device


def _factor_order(stat: Stat) -> torch.Tensor | None:
    """The column order of the blocks :func:`_dense_blocks` yields: ``order[j]`` is the canonical
    column of column ``j`` (:attr:`LayerFactors.h_fast`), or None for the canonical order."""
    return stat.h_fast[1] if isinstance(stat, LayerFactors) else None


def _to_canonical(x: torch.Tensor, order: torch.Tensor | None, dims: tuple[int, ...] = (-1,)) -> torch.Tensor:
    """``x`` with the factor-order axes ``dims`` put back in canonical order."""
    if order is None:
        return x
    inverse = torch.argsort(order).to(x.device)
    for dim in dims:
        x = x.index_select(dim, inverse)
    return x


def _dense_blocks(stat: Stat, max_elements: int) -> Iterator[tuple[torch.Tensor, bool]]:
    """Per-sample gradient blocks ``(n, C, D)`` of a statistic, with whether the block is a fresh
    tensor (which may then be overwritten in place). For :class:`LayerFactors` the columns are in
    :func:`_factor_order` and every block is written into one buffer: a block is valid until the
    next one is requested."""
    if isinstance(stat, LayerFactors):
        buf = None
        for rows in stat.chunks(max_elements):
            r = rows.stop - rows.start
            if buf is None:
                buf = stat.raw_grad.new_empty((r, *stat.shape))
            yield stat.grads_chunk(rows, canonical=False, out=buf[:r]), True
    else:
        if stat.ndim != 3:
            raise ValueError(f"Dense per-sample gradients must have shape (N, C, D), got {tuple(stat.shape)}.")
        n, c, d = stat.shape
        for rows in row_chunks(n, c, d, max_elements):
            yield stat[rows], False


_GRAM_BLOCKS = 4
"""Column blocks of :func:`_gram64`: the upper block triangle is 10 of 16 blocks, 5/8 of the full
product's multiply-adds (``benchmarks/bench_fit_peers.py`` times the whole fit)."""


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A factor ``(N, K, T)`` (``h`` or ``δ``) as its ``N·T`` rows ``(N·T, K)``: a view of a
    position-major factor (see :func:`rose_core.pergrad.unfold`)."""
    n, k, t = x.shape
    return x[:, :, 0] if t == 1 else x.transpose(0, 1).reshape(k, n * t).T


def _gram64(m: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``mᵀ m`` ``(D, D)`` of rows ``m`` ``(K, D)``: products in ``dtype`` (None: ``m``'s), returned in float64.

    When the product is compute-bound (``K ≥ D``) only the upper block triangle is multiplied and the
    rest mirrored (BLAS has no symmetric rank-k update in torch); the result is exactly symmetric."""
    if dtype is not None:
        m = m.to(dtype)
    k, d = m.shape
    if k < d or d < 2 * _GRAM_BLOCKS:
        return (m.T @ m).to(_F64)
    out = torch.empty(d, d, dtype=_F64, device=m.device)
    edges = [i * d // _GRAM_BLOCKS for i in range(_GRAM_BLOCKS + 1)]
    mt = m.T
    for a0, a1 in zip(edges[:-1], edges[1:]):
        block = mt[a0:a1] @ m[:, a0:]            # rows a0:a1, columns a0: (the diagonal block and right of it)
        out[a0:a1, a0:] = block
        out[a1:, a0:a1] = block[:, a1 - a0:].T
    return out


def _squared(g: torch.Tensor, fresh: bool) -> torch.Tensor:
    return g.square_() if fresh else g * g


def _weighted_sq_norm(g: torch.Tensor, w: torch.Tensor, fresh: bool) -> torch.Tensor:
    """``Σ_ij g_ij² w_ij`` per sample of ``g`` ``(n, C, D)`` (a matrix-vector product)."""
    n = g.shape[0]
    return _squared(g, fresh).reshape(n, -1) @ w.reshape(-1)


class LayerwiseFisher:
    """Block-diagonal (one block per layer) Fisher approximation; see the module docstring.

    Subclasses define the per-layer accumulators of each pass and the score.
    """

    kind: str = "base"
    passes: int = 1
    _KIND_ID = {"diag": 1, "ekfac": 2}

    def __init__(self, damping: float = 1e-8, max_elements: int | None = None) -> None:
        if not (damping >= 0.0) or damping != damping or damping == float("inf"):
            raise ValueError(f"damping must be a finite number >= 0, got {damping!r}.")
        self.damping = float(damping)
        self.compact = False  # True once loaded from a scoring-only state dict
        self.max_elements = None if max_elements is None else int(max_elements)
        """Largest ``(n, C, D)`` block materialised at once; ``None``: 2^20 elements on the CPU
        (cache-sized), 2^24 on accelerators (fewer kernel launches)."""
        self.phase = 0
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self._weights: dict[tuple, object] = {}   # derived tensors (inverse weights, cast bases), per dtype/device
        self._call: dict[tuple, torch.Tensor] = {}  # results shared between layers within one call

    def _in_factor_order(self, name: str, what: str, t: torch.Tensor, order: torch.Tensor | None,
                         dim: int) -> torch.Tensor:
        """A canonical ``(C, D)`` weight or ``(D, D)`` basis ``t`` with axis ``dim`` in a factor's
        order (:func:`_factor_order`), cached like the weights."""
        if order is None:
            return t
        key = (name, what, "factor-order", t.dtype, str(t.device))
        v = self._weights.get(key)
        if v is None:
            v = t.index_select(dim, order.to(t.device))
            self._weights[key] = v
        return v

    def _block_elements(self, device: torch.device) -> int:
        if self.max_elements is not None:
            return self.max_elements
        return CPU_CHUNK_ELEMENTS if device.type == "cpu" else DEFAULT_CHUNK_ELEMENTS

    # --- interface -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True once every pass has ended: :meth:`precondition_norm` can be called."""
        return self.phase >= self.passes

    @property
    def layers(self) -> list[str]:
        return list(self.state)

    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        """``{layer: (C, D)}`` of the fitted gradient matrices."""
        return {name: self._shape(st) for name, st in self.state.items()}

    def update(self, stats: Mapping[str, Stat]) -> None:
        """Accumulate one batch of per-layer statistics into the current pass's sums."""
        if self.ready:
            raise RuntimeError(f"This {self.kind} fit is finished ({self.passes} pass(es) ended); "
                               "use empty_like() + merge() to add data.")
        if self.state and set(stats) != set(self.state):
            raise ValueError(f"Statistics for layers {sorted(stats)} do not match the fit's layers {sorted(self.state)}.")
        # ``_weights`` is kept: what it caches while passes run (the cast EKFAC bases) is fixed within
        # a pass, and the weights derived from the sums are built only once the fit is ready, which
        # takes no more updates (``end_pass``, ``merge`` and ``to`` clear it).
        self._call = {}
        with torch.no_grad():
            for name, stat in stats.items():
                if name not in self.state:
                    if self.phase > 0:
                        raise ValueError(f"Layer {name!r} was not seen in the first pass.")
                    self.state[name] = {}
                st = self.state[name]
                if "shape" in st and tuple(st["shape"].tolist()) != _shape_of(stat):
                    raise ValueError(f"Layer {name!r}: gradient shape {_shape_of(stat)} does not match the fit's "
                                     f"{tuple(st['shape'].tolist())}.")
                self._update_layer(name, st, stat)
        self._call = {}

    def end_pass(self) -> None:
        """Close the current pass (EKFAC: computes the eigenbases after pass 0)."""
        if self.ready:
            raise RuntimeError("All passes have already ended.")
        if not self.state:
            raise RuntimeError("No statistics were accumulated in this pass (empty fit set?).")
        for name, st in self.state.items():
            if float(st[self._count_key(self.phase)]) <= 0:
                raise RuntimeError(f"Layer {name!r} received no samples in pass {self.phase}.")
        with torch.no_grad():
            for st in self.state.values():
                self._end_pass_layer(st, self.phase)
        self._call = {}
        self.phase += 1
        self._weights.clear()

    def accumulators(self) -> dict[str, torch.Tensor]:
        """The live sum/count tensors of the current (or, once ready, the last) pass, by state key.

        Summing them across fits (``dist.all_reduce`` in place) is how fits merge.
        """
        p = min(self.phase, self.passes - 1)
        keys = self._acc_keys(p)
        return {f"{name}/{k}": st[k] for name, st in self.state.items() for k in keys if k in st}

    def empty_like(self) -> "LayerwiseFisher":
        """A fit in the same pass with the same earlier results (e.g. eigenbases) and zero accumulators."""
        new = type(self)(damping=self.damping, max_elements=self.max_elements)
        new.phase = self.phase
        p = min(self.phase, self.passes - 1)
        acc = set(self._acc_keys(p))
        for name, st in self.state.items():
            new.state[name] = {k: (torch.zeros_like(v) if k in acc else v.clone()) for k, v in st.items()}
        return new

    def merge(self, other: "LayerwiseFisher") -> "LayerwiseFisher":
        """Add ``other``'s sums of the current pass to this fit (in place; returns ``self``).

        Both fits must be of the same kind and pass and share every earlier result
        (EKFAC: identical eigenbases). Merging two fits of disjoint halves equals the
        fit of the whole, up to float64 rounding of the sums, when the halves are made of the
        same batches (other batches change a float32 model's batch statistics by float32 rounding).
        """
        if type(other) is not type(self):
            raise ValueError(f"Cannot merge a {other.kind} fit into a {self.kind} fit.")
        if self.compact or other.compact:
            raise ValueError("A compact (scoring-only) fit cannot be merged: it no longer holds the "
                             "first-pass sums. Save fits with state_dict(compact=False) to merge them later.")
        if other.phase != self.phase:
            raise ValueError(f"Cannot merge fits in different passes ({self.phase} vs {other.phase}).")
        if not other.state:
            return self
        if not self.state:
            self.state = {n: {k: v.clone() for k, v in st.items()} for n, st in other.state.items()}
            self._weights.clear()
            return self
        if set(other.state) != set(self.state):
            raise ValueError(f"Cannot merge fits of different layers: {sorted(self.state)} vs {sorted(other.state)}.")
        p = min(self.phase, self.passes - 1)
        acc = set(self._acc_keys(p))
        for name, st in self.state.items():
            ot = other.state[name]
            if self._shape(st) != self._shape(ot):
                raise ValueError(f"Layer {name!r} has different shapes in the two fits.")
            for k, v in st.items():
                if k in acc or k == "shape":
                    continue
                if k in ot and not torch.equal(v, ot[k].to(v.device)):
                    raise ValueError(f"Layer {name!r}: the fits differ in {k!r}; only fits sharing every earlier "
                                     "result (e.g. EKFAC eigenbases) can be merged. Merge the first-pass sums, "
                                     "compute the bases once, then fit the second pass in those bases (empty_like()).")
            for k in acc:
                if k in st:
                    st[k] += ot[k].to(st[k].device)
        self._weights.clear()
        return self

    def precondition_norm(self, grads: Mapping[str, Stat]) -> dict[str, torch.Tensor]:
        """Per-sample ``s_l = g_lᵀ F_l⁻¹ g_l`` ``(N,)`` for each layer in ``grads`` (factors or dense ``(N, C, D)``)."""
        if not self.ready:
            raise RuntimeError(f"The {self.kind} fit is not finished: {self.phase} of {self.passes} pass(es) ended.")
        out = {}
        self._call = {}
        with torch.no_grad():
            for name, stat in grads.items():
                if name not in self.state:
                    raise KeyError(f"Layer {name!r} is not part of this fit ({self.layers}).")
                st = self.state[name]
                if _shape_of(stat) != self._shape(st):
                    raise ValueError(f"Layer {name!r}: gradient shape {_shape_of(stat)} does not match the fit's "
                                     f"{self._shape(st)}.")
                out[name] = self._score_layer(name, st, stat)
        self._call = {}
        return out

    def conditioning(self) -> dict[str, dict]:
        """Per layer, the numbers that say whether its fit is well posed (see :meth:`rank_problems`).

        Keys: ``images`` (samples in the fit), ``positions`` (per image), ``dims`` (``{factor: dimension}``),
        ``min_images`` (``{factor: ceil(dim / positions)}``, the fewest images whose statistics can
        have full rank), ``ranks`` (``{factor: numerical rank}``: eigenvalues (EKFAC) or diagonal
        entries (DIAG) above ``dim · ε₃₂ · max``, numpy's ``matrix_rank`` convention at the float32
        noise floor of the statistics — informational: a ReLU network's activations have genuinely
        near-empty directions, e.g. inactive units, that no number of images fills).
        """
        raise NotImplementedError

    def rank_problems(self) -> list[str]:
        """One sentence per factor that is rank-deficient *by construction*: fitted on fewer images
        than ``min_images`` (EKFAC: fewer image-positions than the factor's dimension, so its rank is
        at most ``images · positions`` whatever the data; DIAG: every entry is its own estimate, so
        one image suffices). Empty when every factor has enough.

        Such a factor has directions of exactly zero estimated variance; relative damping then
        gives them a weight of ~1/λ, and the layer score measures the distance from the span of
        the fit images instead of ``gᵀF⁻¹g``. The remedy is more fit images.
        """
        out = []
        for name, c in self.conditioning().items():
            for factor, dim in c["dims"].items():
                have = c["images"] * c["positions"]
                if c["images"] < c["min_images"][factor]:
                    out.append(f"Layer {name!r}: its {factor} (dimension {dim}) was estimated from "
                               f"{c['images']} image(s) × {c['positions']} position(s), so its rank is at most "
                               f"{have}; fit on at least {c['min_images'][factor]} images (the defaults use "
                               f"4× the largest such number).")
        return out

    def to(self, device: str | torch.device) -> "LayerwiseFisher":
        """Move every statistic to ``device`` (in place; returns ``self``)."""
        for st in self.state.values():
            for k in list(st):
                if k != "shape":  # metadata stays on the CPU
                    st[k] = st[k].to(device)
        self._weights.clear()
        return self

    # --- serialisation -----------------------------------------------------------------
    _SCORING_ONLY_DROP: tuple[str, ...] = ()
    """Fields a finished fit does not need for scoring (dropped by ``state_dict(compact=True)``)."""
    _BASIS_KEYS: tuple[str, ...] = ()
    """Fields that ``state_dict(basis_dtype=...)`` may store in a lower precision."""

    def state_dict(self, compact: bool = False, basis_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Flat ``{key: tensor}`` (safetensors-compatible): ``_meta.*`` plus ``{layer}/{field}``.

        ``compact=True`` (finished fits only) drops what scoring does not need: for EKFAC the
        first-pass sums ``A_sum``/``B_sum`` (a 2048×2048 float64 matrix per VAE head), so the
        fit can no longer be merged with another one. ``basis_dtype`` stores the eigenbases in
        that dtype; with the dtype the scorer computes in (float32 for a float32 model) the
        reloaded fit scores exactly as the in-memory one, which casts its bases the same way.
        """
        if compact and not self.ready:
            raise ValueError("Only a finished fit can be saved in compact form.")
        sd = {"_meta.kind": torch.tensor(self._KIND_ID[self.kind]),
              "_meta.phase": torch.tensor(self.phase),
              "_meta.damping": torch.tensor(self.damping, dtype=_F64),
              "_meta.compact": torch.tensor(int(compact or self.compact))}
        for name, st in self.state.items():
            for k, v in st.items():
                if compact and k in self._SCORING_ONLY_DROP:
                    continue
                if basis_dtype is not None and k in self._BASIS_KEYS:
                    v = v.to(basis_dtype)
                sd[f"{name}/{k}"] = v
        return sd

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], max_elements: int | None = None
                        ) -> "LayerwiseFisher":
        """Rebuild a fit from :meth:`state_dict` (``cls`` may be the base class: the kind is read from ``sd``)."""
        try:
            kind_id = int(sd["_meta.kind"])
            kind = {v: k for k, v in cls._KIND_ID.items()}[kind_id]
            target = FISHER_KINDS[kind]
            if cls is not LayerwiseFisher and cls is not target:
                raise ValueError(f"The state holds a {kind} fit, not {cls.kind}.")
            new = target(damping=float(sd["_meta.damping"]), max_elements=max_elements)
            new.phase = int(sd["_meta.phase"])
            new.compact = bool(int(sd["_meta.compact"])) if "_meta.compact" in sd else False
        except KeyError as exc:
            raise ValueError(f"Not a Fisher state dict (missing {exc}).") from exc
        for key, v in sd.items():
            if key.startswith("_meta."):
                continue
            name, field = key.rsplit("/", 1)
            new.state.setdefault(name, {})[field] = v
        needed = new._required_keys(new.phase) - (set(new._SCORING_ONLY_DROP) if new.compact else set())
        for name, st in new.state.items():
            missing = needed - set(st)
            if missing:
                raise ValueError(f"Fisher state for layer {name!r} lacks {sorted(missing)}.")
        return new

    # --- per-layer hooks for subclasses ----------------------------------------------------
    @staticmethod
    def _shape(st: dict[str, torch.Tensor]) -> tuple[int, int]:
        return tuple(int(v) for v in st["shape"].tolist())

    def _acc_keys(self, phase: int) -> tuple[str, ...]:
        raise NotImplementedError

    def _count_key(self, phase: int) -> str:
        raise NotImplementedError

    def _required_keys(self, phase: int) -> set[str]:
        keys = {"shape"}
        for p in range(min(phase, self.passes - 1) + 1):
            keys |= set(self._acc_keys(p))
        return keys

    def _update_layer(self, name: str, st: dict, stat: Stat) -> None:
        raise NotImplementedError

    def _end_pass_layer(self, st: dict, phase: int) -> None:
        pass

    def _score_layer(self, name: str, st: dict, stat: Stat) -> torch.Tensor:
        raise NotImplementedError

    def _inverse_weights(self, name: str, st: dict, sums_key: str, count_key: str,
                         dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``1 / (M + damping·mean(M))`` with ``M = sums / count``, cached per dtype/device."""
        key = (name, dtype, str(device))
        w = self._weights.get(key)
        if w is None:
            m = st[sums_key] / st[count_key]
            lam = self.damping * m.mean()
            denom = m + lam
            if not bool((denom > 0).all()):
                raise RuntimeError(f"Layer {name!r}: the Fisher has zero entries and damping is 0; "
                                   "use a positive damping.")
            w = (1.0 / denom).to(device=device, dtype=dtype)
            self._weights[key] = w
        return w


class DiagFisher(LayerwiseFisher):
    """Diagonal empirical Fisher ``F = E[g²]`` (one pass); ``s = Σ g² / (F + λ)``, ``λ = damping·mean(F)``."""

    kind = "diag"
    passes = 1

    def _acc_keys(self, phase: int) -> tuple[str, ...]:
        return ("sq_sum", "count")

    def _count_key(self, phase: int) -> str:
        return "count"

    def _update_layer(self, name: str, st: dict, stat: Stat) -> None:
        c, d = _shape_of(stat)
        if "sq_sum" not in st:
            dev = stat.raw_grad.device if isinstance(stat, LayerFactors) else stat.device
            st["shape"] = torch.tensor([c, d])
            st["sq_sum"] = torch.zeros(c, d, dtype=_F64, device=dev)
            st["count"] = torch.zeros((), dtype=_F64, device=dev)
        if _rank_one(stat):
            dl, hl = stat.delta[:, :, 0], stat.h[:, :, 0]
            st["sq_sum"] += ((dl * dl).T @ (hl * hl)).to(_F64)   # per batch in the compute dtype
            st["count"] += stat.n
            return
        n, sums = 0, None
        for g, fresh in _dense_blocks(stat, self._block_elements(_device_dtype(stat)[1])):
            block = _squared(g, fresh).sum(0)   # blocks summed over the batch in the compute dtype
            sums = block if sums is None else sums.add_(block)
            n += g.shape[0]
        if sums is not None:
            st["sq_sum"] += _to_canonical(sums.to(_F64), _factor_order(stat))
        st["count"] += n

    def conditioning(self) -> dict[str, dict]:
        out = {}
        for name, st in self.state.items():
            f = st["sq_sum"].flatten()
            dim = f.numel()
            rank = int((f > f.max() * dim * _EPS32).sum()) if float(f.max()) > 0 else 0
            out[name] = {"images": int(st["count"]), "positions": 1, "dims": {"diagonal": dim},
                         "ranks": {"diagonal": rank}, "min_images": {"diagonal": 1}}
        return out

    def fisher(self, name: str) -> torch.Tensor:
        """``F = E[g²]`` ``(C, D)`` of a layer (float64)."""
        st = self.state[name]
        return st["sq_sum"] / st["count"]

    def _score_layer(self, name: str, st: dict, stat: Stat) -> torch.Tensor:
        dtype, dev = _device_dtype(stat)
        w = self._inverse_weights(name, st, "sq_sum", "count", dtype, dev)
        if _rank_one(stat):
            dl, hl = stat.delta[:, :, 0], stat.h[:, :, 0]
            return ((dl * dl) @ w * (hl * hl)).sum(1)
        w = self._in_factor_order(name, "inverse", w, _factor_order(stat), 1)
        return torch.cat([_weighted_sq_norm(g, w, fresh)
                          for g, fresh in _dense_blocks(stat, self._block_elements(dev))])


class EkfacFisher(LayerwiseFisher):
    """Eigenvalue-corrected Kronecker-factored Fisher (two passes); see the module docstring.

    Per layer: pass 0 sums ``A_sum = Σ h hᵀ``, ``B_sum = Σ δ δᵀ`` over samples and positions
    (``pos_count``) and counts samples (``n_factors``); ``end_pass`` sets ``U_A``, ``U_B``
    (and eigenvalues ``eig_A``, ``eig_B``) from ``A = A_sum/pos_count``, ``B = B_sum/pos_count``;
    pass 1 sums ``sigma_sum = Σ_i G̃_i²`` and ``count``. ``Σ = sigma_sum / count``.
    """

    kind = "ekfac"
    passes = 2
    input_gram_dtype: torch.dtype | None = None
    """Precision of a batch's input-factor Gram ``Σ h hᵀ`` (None: the compute dtype; the sum is float64)."""
    output_gram_dtype: torch.dtype | None = _F64
    """Precision of a batch's output-factor Gram ``Σ δ δᵀ`` (see the module docstring's precision note)."""
    _SCORING_ONLY_DROP = ("A_sum", "B_sum")
    _BASIS_KEYS = ("U_A", "U_B")

    def _acc_keys(self, phase: int) -> tuple[str, ...]:
        return ("A_sum", "B_sum", "pos_count", "n_factors") if phase == 0 else ("sigma_sum", "count")

    def _count_key(self, phase: int) -> str:
        return "n_factors" if phase == 0 else "count"

    def _required_keys(self, phase: int) -> set[str]:
        keys = super()._required_keys(phase)
        return keys | {"U_A", "U_B", "eig_A", "eig_B"} if phase >= 1 else keys

    def _update_layer(self, name: str, st: dict, stat: Stat) -> None:
        if self.phase == 0:
            self._update_factors(st, stat)
        else:
            self._update_sigma(name, st, stat)

    def _update_factors(self, st: dict, stat: Stat) -> None:
        if not isinstance(stat, LayerFactors):
            raise TypeError("EKFAC's first pass needs the factors h and δ (LayerFactors), not dense gradients.")
        c, d = stat.shape
        h, dl = stat.h, stat.delta
        if "A_sum" not in st:
            dev = dl.device
            st["shape"] = torch.tensor([c, d])
            st["A_sum"] = torch.zeros(d, d, dtype=_F64, device=dev)
            st["B_sum"] = torch.zeros(c, c, dtype=_F64, device=dev)
            st["pos_count"] = torch.zeros((), dtype=_F64, device=dev)
            st["n_factors"] = torch.zeros((), dtype=_F64, device=dev)
        n, _, t = h.shape
        st["A_sum"] += self._input_gram(stat)
        st["B_sum"] += self._output_gram(stat)
        st["pos_count"] += n * t
        st["n_factors"] += n

    def _input_gram(self, f: LayerFactors) -> torch.Tensor:
        """``Σ_{i,t} h hᵀ`` of a batch: one product in the compute dtype, returned in float64 (see the
        module docstring's precision note); layers reading the same input tensor (the VAE's heads)
        share one product."""
        raw = f.raw_input
        key = ("gram", raw.data_ptr(), tuple(raw.shape), tuple(raw.stride()), raw.dtype, f.shape, f.positions)
        gram = self._call.get(key)
        if gram is None:
            h, order = f.h_fast
            gram = _to_canonical(_gram64(_rows(h), self.input_gram_dtype), order, dims=(0, 1))
            self._call[key] = gram
        return gram

    def _output_gram(self, f: LayerFactors) -> torch.Tensor:
        """``Σ_{i,t} δ δᵀ`` of a batch, in float64 (see the module docstring's precision note)."""
        return _gram64(_rows(f.delta), self.output_gram_dtype)

    def end_pass(self) -> None:
        self._eigh_cache: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = []
        try:
            super().end_pass()
        finally:
            self._eigh_cache = []

    def _eigh(self, m_sum: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigen-decomposition of ``m_sum / count`` in float64; layers with bit-identical sums (the
        VAE's μ and log σ² heads read the same input) share one decomposition."""
        for other, result in self._eigh_cache:
            if other.shape == m_sum.shape and torch.equal(other, m_sum):
                return result[0].clone(), result[1].clone()
        m = m_sum / count
        vals, vecs = torch.linalg.eigh(0.5 * (m + m.T))
        # contiguous: a reloaded fit (safetensors stores row-major) then scores bit-identically
        result = (vals, vecs.contiguous())
        self._eigh_cache.append((m_sum, result))
        return result

    def _end_pass_layer(self, st: dict, phase: int) -> None:
        if phase != 0:
            return
        st["eig_A"], st["U_A"] = self._eigh(st["A_sum"], st["pos_count"])
        st["eig_B"], st["U_B"] = self._eigh(st["B_sum"], st["pos_count"])
        c, d = self._shape(st)
        st["sigma_sum"] = torch.zeros(c, d, dtype=_F64, device=st["A_sum"].device)
        st["count"] = torch.zeros((), dtype=_F64, device=st["A_sum"].device)

    def _bases(self, name: str, st: dict, dtype: torch.dtype, device: torch.device):
        """``(U_A, U_B, group)`` cast to the compute dtype/device (cached); ``group`` names the first
        layer with a bit-identical ``U_A`` (rotated inputs are shared within a group)."""
        key = (name, "U", dtype, str(device))
        u = self._weights.get(key)
        if u is None:
            group = next(n for n, o in self.state.items()
                         if o["U_A"].shape == st["U_A"].shape and torch.equal(o["U_A"], st["U_A"]))
            u = (st["U_A"].to(device=device, dtype=dtype), st["U_B"].to(device=device, dtype=dtype), group)
            self._weights[key] = u
        return u

    def _rotated(self, name: str, st: dict, stat: Stat):
        """``("rank1", h̃ (N, D), δ̃ (N, C))`` or ``("dense", iterator of (G̃ block (n, C, D), fresh), None)``."""
        dtype, dev = _device_dtype(stat)
        ua, ub, group = self._bases(name, st, dtype, dev)
        if _rank_one(stat):
            raw = stat.raw_input
            key = ("h_rot", group, raw.data_ptr(), tuple(raw.shape), tuple(raw.stride()), raw.dtype, stat.shape)
            h_rot = self._call.get(key)
            if h_rot is None:
                h_rot = stat.h[:, :, 0] @ ua
                self._call[key] = h_rot
            return "rank1", h_rot, stat.delta[:, :, 0] @ ub
        if not isinstance(stat, LayerFactors):
            blocks = ((ub.T @ g @ ua, True) for g, _ in _dense_blocks(stat, self._block_elements(dev)))
            return "dense", blocks, None
        return "dense", self._rotated_blocks(stat, self._in_factor_order(name, "U_A", ua, stat.h_fast[1], 0),
                                             ub), None

    def _rotated_blocks(self, f: LayerFactors, ua: torch.Tensor, ub: torch.Tensor
                        ) -> Iterator[tuple[torch.Tensor, bool]]:
        """Blocks of ``G̃ = U_Bᵀ (Σ_t δ_t h_tᵀ + offset) U_A``. ``h`` and ``δ`` of the whole batch are
        rotated first when that is cheaper (one large matrix product each), then the per-sample
        products run in cache-sized blocks."""
        c, d = f.shape
        t = f.positions
        h_first = t <= c   # T·D² (rotate h) vs C·D² (rotate G from the right)
        d_first = t <= d   # T·C² (rotate δ) vs D·C² (rotate G from the left)
        a_all = f.delta.transpose(1, 2)   # (N, T, C)
        b_all = f.h_fast[0].transpose(1, 2)   # (N, T, D), rows of ua in the same order
        if d_first:
            a_all = a_all @ ub
        if h_first:
            b_all = b_all @ ua
        off = f.offset
        if off is not None:
            if d_first:
                off = ub.T @ off
            if h_first:
                off = off @ ua
        for rows in f.chunks(self._block_elements(a_all.device)):
            g = torch.bmm(a_all[rows].transpose(1, 2), b_all[rows])   # (n, C, D)
            if off is not None:
                g += off
            if not d_first:
                g = ub.T @ g
            if not h_first:
                g = g @ ua
            yield g, True

    def _update_sigma(self, name: str, st: dict, stat: Stat) -> None:
        mode, x, y = self._rotated(name, st, stat)
        if mode == "rank1":
            st["sigma_sum"] += ((y * y).T @ (x * x)).to(_F64)   # per batch in the compute dtype
            st["count"] += x.shape[0]
            return
        n, batch_sum = 0, None
        for g, fresh in x:   # cache-sized blocks of samples, summed in the compute dtype over the batch
            block = _squared(g, fresh).sum(0)
            batch_sum = block if batch_sum is None else batch_sum.add_(block)
            n += g.shape[0]
        if batch_sum is not None:
            st["sigma_sum"] += batch_sum.to(_F64)
        st["count"] += n

    def conditioning(self) -> dict[str, dict]:
        if self.phase < 1:
            raise RuntimeError("The eigenbases are computed when the first pass ends; call end_pass() first.")
        out = {}
        for name, st in self.state.items():
            c, d = self._shape(st)
            images = int(st["n_factors"])
            positions = int(round(float(st["pos_count"]) / images))
            ranks = {}
            for factor, key, dim in (("input factor A", "eig_A", d), ("output factor B", "eig_B", c)):
                ev = st[key]
                top = float(ev.max())
                ranks[factor] = int((ev > top * dim * _EPS32).sum()) if top > 0 else 0
            out[name] = {"images": images, "positions": positions,
                         "dims": {"input factor A": d, "output factor B": c}, "ranks": ranks,
                         "min_images": {"input factor A": -(-d // max(1, positions)),
                                        "output factor B": -(-c // max(1, positions))}}
        return out

    def sigma(self, name: str) -> torch.Tensor:
        """``Σ = E[G̃²]`` ``(C, D)`` of a layer (float64)."""
        st = self.state[name]
        return st["sigma_sum"] / st["count"]

    def _score_layer(self, name: str, st: dict, stat: Stat) -> torch.Tensor:
        dtype, dev = _device_dtype(stat)
        w = self._inverse_weights(name, st, "sigma_sum", "count", dtype, dev)
        mode, x, y = self._rotated(name, st, stat)
        if mode == "rank1":
            return ((y * y) @ w * (x * x)).sum(1)
        return torch.cat([_weighted_sq_norm(g, w, fresh) for g, fresh in x])


FISHER_KINDS: dict[str, type[LayerwiseFisher]] = {"diag": DiagFisher, "ekfac": EkfacFisher}


def make_fisher(kind: str, damping: float = 1e-8, **kwargs) -> LayerwiseFisher:
    """A new, empty fit of ``kind`` (``"diag"`` or ``"ekfac"``)."""
    if kind not in FISHER_KINDS:
        raise ValueError(f"Unknown Fisher approximation {kind!r}; expected one of {sorted(FISHER_KINDS)}.")
    return FISHER_KINDS[kind](damping=damping, **kwargs)


def save_fisher(fisher: LayerwiseFisher, path: str | os.PathLike) -> None:
    """Write a fit to one ``.safetensors`` file (tensors only; nothing is pickled)."""
    from rose_core.checkpoint import save_tensors

    save_tensors(fisher.state_dict(), Path(path), metadata={"format": "rose-fisher", "kind": fisher.kind})


def load_fisher(path: str | os.PathLike, device: str | torch.device = "cpu") -> LayerwiseFisher:
    """Read a fit written by :func:`save_fisher`; raises :class:`CheckpointError` if unreadable."""
    from rose_core.checkpoint import load_tensors

    sd = load_tensors(Path(path))
    try:
        return LayerwiseFisher.from_state_dict(sd).to(device)
    except ValueError as exc:
        raise CheckpointError(f"{path} is not a valid Fisher fit ({exc}).") from exc
