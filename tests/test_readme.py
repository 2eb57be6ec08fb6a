"""Every README figure comes from a committed artifact (scripts/readme_figures.py), and the
default verdict agrees with the recorded decision (scripts/choose_verdict.py)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_figures_are_current():
    proc = subprocess.run([sys.executable, "scripts/readme_figures.py", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + "\nRun: python scripts/readme_figures.py"


def test_every_marked_block_has_a_renderer_and_stale_text_is_caught(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import readme_figures

    text = (REPO / "README.md").read_text()
    names = set(readme_figures.MARK.findall(text) and [m.group("name") for m in readme_figures.MARK.finditer(text)])
    assert names and names <= set(readme_figures.BLOCKS)
    stale = text.replace("<!-- BEGIN figures:checkpoints -->\n", "<!-- BEGIN figures:checkpoints -->\n| 0.999 |\n", 1)
    (tmp_path / "README.md").write_text(stale)
    assert readme_figures.main(["--check", "--readme", str(tmp_path / "README.md")]) == 1


def test_default_verdict_is_the_recorded_decision():
    from rose_core.defaults import VERDICT_BY_KIND

    for name, kind in (("vae-fmnist", "vae"), ("glow-fmnist", "glow")):
        decision = json.loads((REPO / "results" / name / "verdict.json").read_text())
        assert decision["verdict"] == VERDICT_BY_KIND[kind], (name, decision["reason"])


def test_peer_and_batch_scoring_blocks_show_every_measured_row(monkeypatch, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    import readme_figures

    for artifact, render in (("peers.json", readme_figures.peers), ("peers-ftz.json", readme_figures.peers_ftz)):
        peers = json.loads((REPO / "results" / "benchmarks" / artifact).read_text())
        text = render()
        for name, row in peers["results"].items():
            assert name.removeprefix("fit ").removeprefix("glow ") in text
            assert f"{row['images_per_s']:.1f}" in text
        for name, entry in peers["peers"].items():   # every peer method is either timed or listed with its reason
            assert entry["agrees"] or entry["reason"] in text
    score = json.loads((REPO / "results" / "benchmarks" / "score.json").read_text())
    text = readme_figures.score_speed()
    for run in score["runs"].values():
        assert f"| {run['files']:,} | {run['images_per_s']:.1f} | {100 * run['idle_fraction']:.1f} % |" in text
    fit = json.loads((REPO / "results" / "benchmarks" / "fit-peers.json").read_text())
    text = readme_figures.fit_peers()
    for row in fit["rows"]:   # every measured size, with its ratio, or marked as disagreeing
        assert (f"| {row['n_fit']:,} | {row['rose_fit_s']:.1f} s | {row['nngeometry_fit_s']:.1f} s | "
                f"**{row['ratio']:.2f}×** |" if row["agrees"] else f"| {row['n_fit']:,} | — |") in text
    prec = json.loads((REPO / "results" / "benchmarks" / "fit-precision.json").read_text())
    text = readme_figures.fit_precision()
    shipped = next(r for r in prec["rows"] if r["variant"] == "shipped")
    assert prec["n_fit"] >= 10_000   # the default fit's size, as rose_core.fisher's docstring says
    for layer, d in shipped["layers"].items():   # the documented claim: float32 rounding of the scores
        assert d["max_rel"] <= 1e-4, (layer, d)
    for r in prec["rows"]:
        assert " | ".join(f"{r['layers'][n]['max_rel']:.1e}" for n in prec["layers"]) in text
    monkeypatch.setattr(readme_figures, "ROOT", tmp_path)   # no artifact: say so, never a number
    assert readme_figures.fit_precision().startswith("_Not measured yet")
    assert readme_figures.fit_peers().startswith("_Not measured yet")
    assert readme_figures.peers().startswith("_Not measured yet")
    assert readme_figures.peers_ftz().startswith("_Not measured yet")
    assert readme_figures.score_speed().startswith("_Not measured yet")
