"""Presets that reproduce the paper's tables: methods × OOD sets (Tables 2/4/5), DIAG vs EKFAC
(Table 6), layer-wise AUROC (Appendix D), Glow's layers (Table 7), brightness (Tables 1/8/9),
the outlier-exposure perturbations (Tables 10/11) and the VAE's capacity (Table 3)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from rose_core.evaluation.keys import Unit, maybe_sha
from rose_core.evaluation.settings import BRIGHTNESS, CAPACITIES, PERTURBATIONS
from rose_core.methods import format_value, parse_method


class PaperPresets:
    """Mixin of :class:`~rose_core.evaluation.harness.Evaluation`: the paper's experiments."""

    def table2(self, methods: Sequence[str] | None = None, ood_sets: Sequence[str] | None = None) -> pd.DataFrame:
        """Methods × OOD sets, unperturbed (paper Table 2; Tables 4/5 are the AUPRC/FPR80 columns).
        Returns the metrics (``method``, ``ood_set`` incl. ``overall``, ``auroc``, …)."""
        t0 = time.perf_counter()
        methods = [parse_method(m).name for m in (methods or self.methods())]
        sets = list(ood_sets or self.ood_sets())
        units = [Unit(m, d) for m in methods for d in [self.in_dataset, *sets]]
        computed = self.score(units)
        metrics = self.update_metrics()
        ran = [m for m in methods if self.method_available(m)[0]]
        self.record_experiment("table2" if self.kind == "vae" else "table5",
                               {"methods": ran, "ood_sets": sets, "wall_s": round(time.perf_counter() - t0, 1),
                                "units_computed": len(computed),
                                "skipped": {m: self.method_available(m)[1] for m in methods if m not in ran}})
        return metrics[(metrics["perturbation"] == "none") & metrics["method"].isin(ran)]

    table5 = table2

    def fisher(self, ood_sets: Sequence[str] | None = None) -> pd.DataFrame:
        """Table 6: ROSE with the DIAG vs the EKFAC Fisher (same layers, same images)."""
        t0 = time.perf_counter()
        sets = list(ood_sets or self.ood_sets())
        self.score([Unit(m, d) for m in ("rose-diag", "rose-ekfac") for d in [self.in_dataset, *sets]])
        metrics = self.update_metrics()
        self.record_experiment("fisher", {"methods": ["rose-diag", "rose-ekfac"], "ood_sets": sets,
                                          "wall_s": round(time.perf_counter() - t0, 1)})
        return metrics[metrics["method"].isin(["rose-diag", "rose-ekfac"]) & (metrics["perturbation"] == "none")]

    def layerwise(self, ood_sets: Sequence[str] | None = None) -> pd.DataFrame:
        """Layer-wise AUROC (each layer's raw score alone) for DIAG and EKFAC (Appendix D)."""
        self.fisher(ood_sets)
        self.record_experiment("layerwise", {"table": "layer_metrics"})
        return self.bundle.table("layer_metrics")

    def glow_layers(self, ood_sets: Sequence[str] | None = None, fisher: str = "diag") -> pd.DataFrame:
        """Table 7: ROSE on Glow's InvConv layers (the default) vs all convolutions."""
        t0 = time.perf_counter()
        sets = list(ood_sets or self.ood_sets())
        methods = [f"rose-{fisher}", f"rose-{fisher}:layers=all"]
        self.score([Unit(m, d) for m in methods for d in [self.in_dataset, *sets]])
        metrics = self.update_metrics()
        self.record_experiment("glow-layers", {"methods": methods, "ood_sets": sets,
                                               "wall_s": round(time.perf_counter() - t0, 1)})
        return metrics[metrics["method"].isin(methods) & (metrics["perturbation"] == "none")]

    def brightness(self, ood_sets: Sequence[str] | None = None, methods: Sequence[str] | None = None,
                   strengths: Sequence[float] = BRIGHTNESS, repeats: int = 1, n: int | None = None) -> pd.DataFrame:
        """Tables 1/8/9: the brightness of the **OOD** images scaled by 0.2×…1.8× (the
        in-distribution test images are left as they are). ``repeats`` > 1 draws other random
        OOD subsets. Returns one metric row per method × set × strength × repeat."""
        t0 = time.perf_counter()
        sets = list(ood_sets or self.default_brightness_sets())
        if methods is None:
            methods = [m for m in ("rose-ekfac", "rose+typicality", "typicality", "likelihood-ratio", "rnd", "nll")
                       if self.method_available(m)[0]]
        methods = [parse_method(m).name for m in methods]
        nmap = None if n is None else {d: n for d in sets}
        units = [Unit(m, self.in_dataset) for m in methods]
        units += [Unit(m, d, "brightness", float(f), r) for m in methods for d in sets for f in strengths
                  for r in range(repeats)]
        self.score(units, n=nmap)
        metrics = self.update_metrics()
        self.record_experiment("brightness", {"methods": methods, "ood_sets": sets, "strengths": list(strengths),
                                              "repeats": repeats, "n_per_set": n or self.settings.n_ood,
                                              "perturbed": "OOD images only",
                                              "wall_s": round(time.perf_counter() - t0, 1)})
        return metrics[(metrics["perturbation"] == "brightness") & metrics["method"].isin(methods)]

    def default_brightness_sets(self) -> list[str]:
        """The sets the paper brightens (CelebA, SVHN, Omniglot) or their stand-ins, plus MNIST."""
        wanted = ["celeba", "faces-lfw", "svhn", "digits-on-photos", "omniglot", "glyphs-scripts", "mnist"]
        have = set(self.ood_sets())
        real = {"celeba": "faces-lfw", "svhn": "digits-on-photos", "omniglot": "glyphs-scripts"}
        out = [d for d in wanted if d in have and not (d in real.values() and
                                                       any(r in have for r, s in real.items() if s == d))]
        return out

    def perturbations(self, ood_sets: Sequence[str] | None = None, train_missing: bool = False,
                      train_epochs: int = 3, train_subset: int | None = 10000) -> pd.DataFrame:
        """Tables 10/11: the outlier-exposure baselines trained with each perturbation
        (SVD K=28, DCT K=28, Gaussian blur, Random μ=0.2): RND with each, and the Likelihood Ratio
        with each background model. Uses ``checkpoints/rnd-<ds>[-<perturbation>]`` and
        ``<checkpoint>-background[-<perturbation>]`` when they exist; with ``train_missing`` it
        trains the missing RNDs (small and fast) into ``results/<name>/fits/``; missing background
        VAEs are reported with their train command."""
        from rose_core.checkpoint import card_path

        t0 = time.perf_counter()
        sets = list(ood_sets or self.ood_sets())
        methods, missing = [], {}
        short = self.in_short_name
        for pert in PERTURBATIONS:
            found = None
            for cand in (self.checkpoint.parent / f"rnd-{short}-{pert}", self.checkpoint.parent / f"rnd-{short}",
                         self.bundle.folder / "fits" / f"rnd-{pert}"):
                if card_path(cand).exists() and maybe_sha(cand) is not None:
                    cfg = json.loads(card_path(cand).read_text()).get("config", {})
                    if cfg.get("perturbation") == pert:
                        found = cand
                        break
            if found is None and train_missing:
                found = self._train_rnd(pert, train_epochs, train_subset)
            if found is None:
                missing[f"rnd ({pert})"] = (f"python scripts/train_rnd.py --perturbation {pert} "
                                            f"--out checkpoints/rnd-{short}-{pert}")
            elif self.rnd_path() is not None and Path(found) == self.rnd_path():
                methods.append("rnd")  # the default RND: same unit as in table2
            else:
                methods.append(f"rnd:path={found}")
            bg = None
            for cand in (Path(f"{self.checkpoint}-background-{pert}"), Path(f"{self.checkpoint}-background")):
                if card_path(cand).exists():
                    c = json.loads(card_path(cand).read_text())
                    if pert == "random" and c.get("noise_fraction"):
                        bg = cand
                        break
                    if c.get("perturbation") == pert:
                        bg = cand
                        break
            if bg is None:
                how = "--noise-fraction 0.2" if pert == "random" else f"--perturbation {pert}"
                preset = "cifar10" if self.card.get("config", {}).get("channels") == 3 else "fmnist"
                cmd = (f"python -m rose_core train --model {self.kind} --preset {preset} --dataset "
                       f"{self.in_dataset} {how} --out {self.checkpoint}-background-{pert}")
                missing[f"likelihood-ratio ({pert})"] = cmd
            elif self.background_path() is not None and Path(bg) == self.background_path():
                methods.append("likelihood-ratio")  # the default background: same unit as in table2
            else:
                methods.append(f"likelihood-ratio:background={bg}")
        units = [Unit(m, d) for m in methods for d in [self.in_dataset, *sets]]
        self.score(units)
        metrics = self.update_metrics()
        self.record_experiment("perturbations", {"methods": methods, "ood_sets": sets, "missing": missing,
                                                 "wall_s": round(time.perf_counter() - t0, 1)})
        return metrics[metrics["method"].isin(methods) & (metrics["perturbation"] == "none")]

    def _train_rnd(self, pert: str, epochs: int, subset: int | None) -> Path | None:
        from rose_core.scorers.rnd import train_rnd

        out = self.bundle.folder / "fits" / f"rnd-{pert}"
        x = self.fit_images(subset if subset else len(self._prepared(self.in_dataset, "train")))
        self._report(0, 0, f"training RND ({pert}) on {len(x)} {self.in_dataset} train images")
        train_rnd(x, out=out, perturbation=pert, epochs=epochs, seed=self.settings.seed,
                  card={"dataset": self.in_dataset, "split": "train", "train_images": len(x),
                        "note": "trained by rose_core.evaluation perturbations preset (small, CPU)"})
        return out

    def capacity(self, ood_sets: Sequence[str] | None = None, capacities: Sequence[float] = CAPACITIES,
                 method: str = "rose-ekfac") -> dict:
        """Table 3: ROSE on VAEs of 0.5×–4× width. Uses ``<checkpoint>-x<c>`` checkpoints
        (1× is this one); the missing ones are reported with their train command. Present ones are
        evaluated into their own bundles (``results/<checkpoint>-x<c>/``)."""
        from rose_core.checkpoint import card_path

        t0 = time.perf_counter()
        if self.kind != "vae":
            info = {"status": "Table 3 varies the VAE's width; not defined for a " + self.kind}
            self.record_experiment("capacity", info)
            return info
        found, missing = {}, {}
        for c in capacities:
            if c == 1.0:
                found[c] = str(self.checkpoint)
                continue
            tag = f"x{format_value(float(c))}"
            path = self.checkpoint.with_name(f"{self.name}-{tag}")
            if card_path(path).exists():
                found[c] = str(path)
            else:
                missing[tag] = (f"python -m rose_core train --model {self.kind} --capacity {format_value(float(c))} "
                                f"--out {path}")
        sets = list(ood_sets or self.ood_sets())
        for c, path in found.items():
            if c == 1.0:
                self.score([Unit(method, d) for d in [self.in_dataset, *sets]])
                self.update_metrics()
            else:
                other = type(self)(path, self.bundle.folder.parent, replace(self.settings, methods=[method]),
                                   self.progress, self.show_progress)
                other.table2([method], sets)
        info = {"method": method, "capacities": list(capacities), "found": {str(k): v for k, v in found.items()},
                "missing": missing, "wall_s": round(time.perf_counter() - t0, 1)}
        if missing:
            info["status"] = "checkpoints missing: " + ", ".join(missing)
            for tag, cmd in missing.items():
                self._note_missing(f"capacity {tag}", f"checkpoint {self.checkpoint}-{tag} not trained; run `{cmd}`")
        self.record_experiment("capacity", info)
        return info

