"""How much a cross-attention mask flatters an edit's background score, measured on the world benchmark.

On the first N cases of the world edit benchmark (``s2s.world.edit_bench.bench_cases``), each source is
inverted once (Direct Inversion, as ``p2p_direct``) and edited with the case's P2P controller; the edit's
background PSNR / SSIM (PnPInversion's convention, ``s2s.edit.bench_metrics``) is then taken with the
renderer's exact mask (``mask.png`` of the benchmark) and with the edit's own cross-attention mask (the one
an edit of a real photo gets: ``s2s.edit.photo_metrics.cross_attention_mask`` at the benchmark's blend
threshold), both written as 8-bit PNGs and read back. Prints means with 95% bootstrap intervals (cases
resampled) of both, their paired difference (split into the convention's 10 log10(N / K) term and the
PSNR over the kept pixels), and the two masks' share of the image, overall and per edit type, and writes
the rows as JSON. Subject cases are left out (they need the trained subject model).

    PYTHONPATH=. python scripts/edit_mask_bias.py --cases 30 --out /tmp/edit_mask_bias.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", default=str(REPO / "models" / "world"))
    parser.add_argument("--out", default=None, help="JSON file for the per-case rows and the summary")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from PIL import Image

    from s2s.edit.bench_metrics import background_metrics
    from s2s.edit.controllers import build_controller
    from s2s.edit.inversion import invert
    from s2s.edit.p2p import generate_edit
    from s2s.edit.photo_metrics import cross_attention_mask, mask_image
    from s2s.io import save_png
    from s2s.metrics.bootstrap import bootstrap_ci
    from s2s.world.edit_cases import by_source
    from s2s.world_studies.edit_bench import BLEND_THRESHOLD, bench_cases, controller_spec, load_pipeline

    start = time.perf_counter()
    cases = [c for c in bench_cases(args.seed, args.cases) if c.edit_type != "subject"]
    pipe = load_pipeline(str(Path(args.models) / "sd"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for group in by_source(cases).values():
            inversion = invert(
                pipe, group[0].source_image(), group[0].source_prompt, "direct", args.steps, 7.5
            )
            for case in group:
                spec = {"threshold": BLEND_THRESHOLD, **controller_spec(case)}
                # The case's controller, storing both prompts' maps as the edit stage's do (no image changes).
                controller = build_controller(
                    pipe.tokenizer, case.source_prompt, case.target_prompt, spec, args.steps
                )
                controller.store_prompts = (0, 1)
                result = generate_edit(
                    pipe,
                    case.source_prompt,
                    case.target_prompt,
                    controller,
                    inversion=inversion,
                    num_inference_steps=args.steps,
                    guidance_scale=7.5,
                )
                latent_mask, info = cross_attention_mask(
                    pipe, controller, case.source_prompt, case.target_prompt, spec
                )
                folder = tmp / case.case_id
                folder.mkdir()
                save_png(case.source_image(), folder / "source.png")
                save_png(result.edited_image, folder / "edited.png")
                save_png(Image.fromarray(case.mask().astype(np.uint8) * 255, "L"), folder / "renderer.png")
                save_png(mask_image(latent_mask, (64, 64)), folder / "attention.png")
                opened = {}
                for name in ("source", "edited", "renderer", "attention"):
                    with Image.open(folder / f"{name}.png") as image:
                        opened[name] = image.convert("L" if name in ("renderer", "attention") else "RGB")
                row = {"case": case.case_id, "edit_type": case.edit_type, **info}
                for mask in ("renderer", "attention"):
                    scores = background_metrics(opened["source"], opened["edited"], opened[mask])
                    row[f"{mask}_psnr"] = scores["background_psnr"]
                    row[f"{mask}_ssim"] = scores["background_ssim"]
                    row[f"{mask}_fraction"] = float((np.asarray(opened[mask]) > 0).mean())
                rows.append(row)
                print(
                    case.case_id,
                    {k: v for k, v in row.items() if k.endswith(("psnr", "fraction"))},
                    flush=True,
                )

    def interval(values):
        values = [v for v in values if v is not None]
        if not values:
            return {"mean": None, "n": 0}
        low, high = bootstrap_ci(values, n_boot=2000, seed=0)
        return {
            "mean": float(np.mean(values)),
            "ci_low": float(low),
            "ci_high": float(high),
            "n": len(values),
        }

    def size_term(row, mask):
        return 10 * math.log10(1 / (1 - row[f"{mask}_fraction"]))

    summary = {}
    groups = {"all": rows} | {
        t: [r for r in rows if r["edit_type"] == t] for t in dict.fromkeys(r["edit_type"] for r in rows)
    }
    for group, members in groups.items():
        both = [r for r in members if r["attention_psnr"] is not None]
        summary[group] = {
            "cases": len(members),
            "attention_mask_whole_image": len(members) - len(both),
            "renderer_psnr": interval([r["renderer_psnr"] for r in members]),
            "attention_psnr": interval([r["attention_psnr"] for r in both]),
            "difference_psnr": interval([r["attention_psnr"] - r["renderer_psnr"] for r in both]),
            # The difference split: the convention's 10 log10(N / K) term of each mask, and the rest (the
            # PSNR over the kept pixels only: docs/edit_bench.md).
            "difference_size_term": interval(
                [size_term(r, "attention") - size_term(r, "renderer") for r in both]
            ),
            "difference_kept_pixels": interval(
                [
                    (r["attention_psnr"] - size_term(r, "attention"))
                    - (r["renderer_psnr"] - size_term(r, "renderer"))
                    for r in both
                ]
            ),
            "renderer_ssim": interval([r["renderer_ssim"] for r in members]),
            "attention_ssim": interval([r["attention_ssim"] for r in both]),
            "renderer_fraction": interval([r["renderer_fraction"] for r in members]),
            "attention_fraction": interval([r["attention_fraction"] for r in members]),
        }
    print(json.dumps(summary, indent=1))
    print(f"{len(rows)} cases in {time.perf_counter() - start:.0f} s")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "summary": summary, "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
