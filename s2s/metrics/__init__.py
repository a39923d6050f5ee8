"""Evaluation of generated images: FID/KID/IS, CLIP score, subject fidelity (DINO, CLIP-I, CLIP-T).

Modules, one job each:

- ``inception``: the FID Inception-v3 and torchvision's ImageNet Inception-v3, without torchvision, read from
  safetensors converted by prefetch (docs/evaluation.md).
- ``features``: the FID/KID/IS feature extractor interface (an Inception-v3, or a tiny stand-in).
- ``image_metrics``: CLIP score, FID, KID, IS, and the study-compatible (pytorch-ignite) FID / IS.
- ``fidelity``: subject fidelity as in the DreamBooth paper (DINO, CLIP-I, CLIP-T).
- ``bootstrap``: percentile bootstrap confidence intervals.
- ``evaluate``: one method's samples -> one metrics JSON (entry point ``evaluate_method``).
- ``table``: all methods' JSONs -> CSV / Markdown / HTML table (entry point ``make_table``).
"""
