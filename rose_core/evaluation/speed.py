"""Presets about cost and sample size: throughput of every method (Figure 4) and AUROC against
the number of Fisher samples (Figure 5)."""

from __future__ import annotations

import logging
import math
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from rose_core.evaluation.keys import digest
from rose_core.evaluation.metrics import safe_metrics
from rose_core.evaluation.sampling import subset_indices
from rose_core.evaluation.settings import FISHER_SAMPLE_SIZES
from rose_core.methods import parse_method
from rose_core.results import TABLES

log = logging.getLogger("rose_core.evaluation")


class SpeedPresets:
    """Mixin of :class:`~rose_core.evaluation.harness.Evaluation`: throughput and Fisher sample size."""

    def throughput(self, methods: Sequence[str] | None = None, n: int = 32, min_seconds: float = 2.0,
                   max_seconds: float = 600.0) -> pd.DataFrame:
        """Figure 4: images per second of every method, measured in this process, one method after
        the other, on the same ``n`` in-distribution test images (of the evaluation half). Each method scores them
        repeatedly until ``min_seconds`` have passed (at least once; stops after ``max_seconds``);
        methods whose batch is larger than ``n`` get the images tiled up to one batch (except
        Likelihood Regret, whose cost is linear in the images anyway). The ROSE fit (one-off) is
        done before timing and excluded."""
        t0 = time.perf_counter()
        methods = [parse_method(m).name for m in (methods or self.methods())]
        methods = [m for m in methods if self.method_available(m)[0]]
        idx = self.indices(self.in_dataset, n=n)  # the evaluation half, like every report
        x = self.inputs(self.in_dataset, idx)
        rows = []
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(methods), desc="throughput", unit="method", dynamic_ncols=True)
        for i, m in enumerate(methods):
            sc = self.scorer(m)  # fits ROSE if needed, before the clock starts
            self._report(i, len(methods), f"timing {m}")
            slow = parse_method(m).base == "likelihood-regret"
            bs = int(getattr(sc, "batch_size", len(x)))
            # Fast methods see the same images tiled up to one full batch, so that every method
            # runs at its own batch size; Likelihood Regret (cost linear in the images, whatever
            # the batch) scores the n images once.
            xr = x if (slow or bs <= len(x)) else x.repeat(math.ceil(bs / len(x)), 1, 1, 1)[:bs]
            if not slow:
                sc.score(x[:2])  # warm-up (allocations, lazy initialisation)
            count, start = 0, time.perf_counter()
            while True:
                sc.score(xr)
                count += len(xr)
                el = time.perf_counter() - start
                if el >= min_seconds or el >= max_seconds:
                    break
            rows.append({"method": m, "images_per_s": count / el, "n_images": count,
                         "batch_size": min(bs, len(xr)),
                         "device": f"{self.settings.device} ({torch.get_num_threads()} threads)"})
            log.info("throughput %s: %.2f img/s (%d images in %.1f s)", m, count / el, count, el)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        frame = pd.DataFrame(rows, columns=TABLES["throughput"])
        with self._locked():
            self.bundle.write("throughput", frame)
        self.record_experiment("throughput", {
            "methods": methods, "images": {"dataset": self.in_dataset, "split": "test", "n": len(x),
                                           "seed": self.settings.seed},
            "min_seconds": min_seconds, "note": "one process, one method after the other, same images; "
                                                "ROSE fit time excluded (see fits[*].fit_seconds)",
            "wall_s": round(time.perf_counter() - t0, 1)})
        return frame

    def fisher_samples(self, sizes: Sequence[int] = FISHER_SAMPLE_SIZES, repeats: int = 10, fisher: str = "ekfac",
                       n_norm: int = 500, n_eval_in: int = 1000, n_eval_per_set: int = 100,
                       ood_sets: Sequence[str] | None = None) -> pd.DataFrame:
        """Figure 5: AUROC vs the number of Fisher samples. For each size and repeat, ROSE is fitted
        on ``size`` random in-distribution train images (a fresh draw per repeat) with a separate
        normalisation set of ``n_norm`` images drawn with them, and scores a fixed evaluation set:
        ``n_eval_in`` in-distribution test images vs up to ``n_eval_per_set`` images of each OOD
        set (``overall``; each set's own AUROC is stored too)."""
        from rose_core.scorers.rose import RoseScorer

        t0 = time.perf_counter()
        sets = list(ood_sets or self.ood_sets())
        s = self.settings
        ev_in = self.indices(self.in_dataset, n=n_eval_in)
        x_in = self.inputs(self.in_dataset, ev_in)
        ev_ood = {d: self.indices(d, n=n_eval_per_set) for d in sets}
        x_ood = {d: self.inputs(d, i) for d, i in ev_ood.items()}
        self.refresh()
        cache = self._manifest.get("fisher_samples_cache", {})
        table = self.bundle.table("fisher_samples")
        todo = []
        for size in sizes:
            for r in range(repeats):
                key = {"fisher": fisher, "n_fit": int(size), "repeat": r, "n_norm": n_norm, "seed": s.seed,
                       "eval": digest([ev_in.tolist(), {d: i.tolist() for d, i in ev_ood.items()}]),
                       "weights": self.weights_hash}
                ck = f"{fisher}|{size}|{r}"
                have = table[(table["fisher"] == fisher) & (table["n_fit"] == size) & (table["repeat"] == r)]
                if cache.get(ck) == key and len(have):
                    continue
                todo.append((size, r, key, ck))
        n_eval = len(x_in) + sum(len(v) for v in x_ood.values())
        total = sum(2 * sz + n_norm + n_eval for sz, *_ in todo)
        bar = None
        if self.show_progress and todo:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc="fisher-samples", unit="img", dynamic_ncols=True)
        done = 0
        for size, r, key, ck in todo:
            data = self._prepared(self.in_dataset, "train")
            idx = subset_indices(len(data), size + n_norm, s.seed * 100_003 + size * 101 + r + 1)
            xf = torch.from_numpy(data[idx]).float().div_(255.0)
            frac = (size + 0.5) / (size + n_norm)  # floor(N·frac) = size Fisher samples exactly
            sc = RoseScorer(self.model, fisher=fisher, fit_fraction=frac, batch_size=s.batch_size,
                            **{k: v for k, v in s.rose.items() if k in ("p", "beta", "aggregation", "damping")})
            sc.fit(xf)
            s_in = sc.score(x_in).score
            rows, pooled = [], []
            for d, xo in x_ood.items():
                so = sc.score(xo).score
                rows.append({"fisher": fisher, "n_fit": int(size), "repeat": r, "ood_set": d,
                             "auroc": safe_metrics(s_in, so, f"fisher-samples {fisher} n={size} on {d}")["auroc"]})
                pooled.append(so)
            rows.append({"fisher": fisher, "n_fit": int(size), "repeat": r, "ood_set": "overall",
                         "auroc": safe_metrics(s_in, np.concatenate(pooled), f"fisher-samples {fisher} n={size} on overall")["auroc"]})
            with self._locked():
                table = self.bundle.table("fisher_samples")
                if len(table):
                    table = table[~((table["fisher"] == fisher) & (table["n_fit"] == size) & (table["repeat"] == r))]
                    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
                else:
                    table = pd.DataFrame(rows)
                self.bundle.write("fisher_samples", table)
                self._set("fisher_samples_cache", ck, key)
                self._write_manifest()
            done += 2 * size + n_norm + n_eval
            if bar is not None:
                bar.update(2 * size + n_norm + n_eval)
            self._report(done, total, f"fisher-samples {fisher} n={size} repeat {r}")
        if bar is not None:
            bar.close()
        self.record_experiment("fisher-samples", {
            "fisher": fisher, "sizes": list(sizes), "repeats": repeats, "n_norm": n_norm,
            "eval": {"n_in": len(x_in), "n_per_set": n_eval_per_set, "ood_sets": sets},
            "wall_s": round(time.perf_counter() - t0, 1)})
        return self.bundle.table("fisher_samples")

