"""Evaluation of generated images: FID/KID/IS, CLIP score, subject fidelity (DINO, CLIP-I, CLIP-T).

Modules, one job each:

- ``features``: the FID/KID/IS feature extractor (torch-fidelity's Inception-v3, or a tiny stand-in).
- ``image_metrics``: CLIP score, FID, KID, IS, and the study's softmax-FID / IS variants.
- ``fidelity``: subject fidelity as in the DreamBooth paper (DINO, CLIP-I, CLIP-T).
- ``bootstrap``: percentile bootstrap confidence intervals.
- ``evaluate``: one method's samples -> one metrics JSON (entry point ``evaluate_method``).
- ``table``: all methods' JSONs -> CSV / Markdown / HTML table (entry point ``make_table``).
"""
