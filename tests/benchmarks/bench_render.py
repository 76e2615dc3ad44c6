"""Rendering speed: wafer maps to PNG files with the package vs with matplotlib, side by side.

    python tests/benchmarks/bench_render.py [--n 300] [--size 448]

Both write one lossless PNG per map of the same pixel size and palette. Target: at least 20x the
matplotlib rate. Run it alone (two cores, other processes distort timings).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from wafersage_utils.maps import loaders, render, synth  # noqa: E402
from wafersage_utils.plots import WAFER_CMAP  # noqa: E402


def matplotlib_png(m: np.ndarray, size: int, path: Path) -> None:
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(m, cmap=WAFER_CMAP, vmin=0, vmax=2, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--size", type=int, default=448)
    args = ap.parse_args()
    path = loaders.DEFAULT_FILES["wm811k"]
    maps = (list(loaders.load_wm811k(path, max_maps=args.n).wafer_map) if path.exists()
            else list(synth.generate(synth.SynthConfig(n_wafers=args.n)).wafer_map))[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        for i, m in enumerate(maps):
            matplotlib_png(m, args.size, tmp / f"mpl_{i}.png")
        t_mpl = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, m in enumerate(maps):
            render.save_png(render.to_image(m, args.size), tmp / f"ours_{i}.png")
        t_ours = time.perf_counter() - t0
        a = np.asarray(Image.open(tmp / "mpl_0.png").convert("RGB"))
        b = np.asarray(Image.open(tmp / "ours_0.png").convert("RGB"))
        agree = float((a == b).all(axis=2).mean())
    print(f"{len(maps)} maps at {args.size} px")
    print(f"matplotlib: {len(maps) / t_mpl:,.1f} maps/s; wafersage_utils.maps.render: {len(maps) / t_ours:,.1f} maps/s")
    print(f"ratio: {t_mpl / t_ours:.1f}x (target >= 20x); same pixels on the first map: {agree:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
