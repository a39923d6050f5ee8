import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer


def test_tiny_pipeline_reloads_and_is_deterministic(tiny_sd):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)

    def run(seed):
        return pipe(
            "a photo of a dog",
            num_inference_steps=5,
            generator=torch.Generator().manual_seed(seed),
            height=64,
            width=64,
            output_type="np",
        ).images

    first, second = run(3), run(3)
    assert first.shape == (1, 64, 64, 3)
    assert (first == second).all()
    other = run(4)
    assert not (first == other).all()


def test_tiny_tokenizer_knows_words_and_loads_with_from_pretrained(tiny_sd):
    tok = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    assert len(tok) > 500  # not the 2-token vocabulary CLIPTokenizer(vocab_file=...) silently builds
    assert tok.tokenize("a dog on the beach") == ["a</w>", "dog</w>", "on</w>", "the</w>", "beach</w>"]
    ids = tok("a dog").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_tiny_model_is_built_deterministically(tmp_path):
    from safetensors.torch import load_file

    from s2s.tiny import build_tiny_sd

    a = build_tiny_sd(tmp_path / "a", seed=5)
    b = build_tiny_sd(tmp_path / "b", seed=5)
    wa = load_file(a / "unet" / "diffusion_pytorch_model.safetensors")
    wb = load_file(b / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_tokenizer_is_identical_across_processes(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; "
        "from s2s.tiny import write_tiny_clip_tokenizer as w; w(Path(sys.argv[1]))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / seed)], check=True, env=env)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()
