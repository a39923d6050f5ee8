"""The method registry (s2s/registry.py) is the one list of methods, and variants (config key variants) run
a method under another name with their own folder, rule, row and rerun trigger."""

from __future__ import annotations

import pytest
import yaml
from test_workflow import TEST_CONFIG, job_blocks, job_counts, snakemake

from s2s import registry
from s2s.config import check_config, depends_training, load_schema, subject, train_config
from s2s.io import S2SError

TOY = {"toy": {"synthetic": True, "class": "toy"}}


def test_every_list_of_methods_is_the_registrys():
    from s2s import config, models, plan, plots, preflight
    from s2s.metrics import table

    names = registry.NAMES
    assert config.METHODS == models.METHODS == plan.TRAINED_MODELS == preflight.METHODS == names
    assert names == table.METHOD_ORDER and (registry.BASE, *names) == plots.METHOD_ORDER
    schema = load_schema()
    assert tuple(schema["properties"]["training"]["properties"])[-len(names) :] == names
    variant_methods = schema["properties"]["variants"]["additionalProperties"]["properties"]["method"]["enum"]
    assert tuple(variant_methods) == names
    for name in names:
        assert registry.method_class(name).name == name
        assert name in table.METHOD_LABELS and name in plots.METHOD_LABELS


def _variant_config(**variants):
    return check_config(
        {
            "subjects": TOY,
            "methods": ["lora", *variants],
            "variants": variants,
            "training": {"max_grad_norm": 2.0, "lora": {"rank": 3, "alpha": 3}},
        }
    )


def test_a_variant_merges_over_its_methods_settings_and_keeps_its_name():
    config = _variant_config(lora_dora={"method": "lora", "use_dora": True, "alpha": 6})
    base, variant = train_config(config, "lora"), train_config(config, "lora_dora")
    assert (variant.method, variant.run_name, base.run_name) == ("lora", "lora_dora", "lora")
    assert (variant.rank, variant.alpha, variant.use_dora, variant.max_grad_norm) == (3, 6, True, 2.0)
    assert (base.rank, base.alpha, base.use_dora) == (3, 3, False)
    # Its own rerun trigger: a variant's key changes the variant's params only.
    other = _variant_config(lora_dora={"method": "lora", "use_dora": True, "alpha": 8})
    assert depends_training(other, "lora", "toy") == depends_training(config, "lora", "toy")
    assert depends_training(other, "lora_dora", "toy") != depends_training(config, "lora_dora", "toy")
    # Options added with issue 22 are left out at their defaults (adding them re-ran no study job).
    assert "use_dora" not in depends_training(config, "lora", "toy")
    assert '"use_dora": true' in depends_training(config, "lora_dora", "toy")
    # The name is no training setting: a variant equal to its method has the method's params.
    same = _variant_config(copy={"method": "lora"})
    assert depends_training(same, "copy", "toy") == depends_training(same, "lora", "toy")


@pytest.mark.parametrize(
    "variants, methods, expected",
    [
        ({"v": {"method": "lora", "num_vectors": 2}}, ["v"], "unknown key(s) num_vectors under variants.v"),
        ({"v": {"method": "lora", "rank": 0}}, ["v"], "config key variants.v.rank: 0 is less than"),
        (
            {"v": {"method": "hypernetwork"}},
            ["v"],
            "config key variants.v.method: 'hypernetwork' is not one of",
        ),
        ({"lora": {"method": "lora"}}, ["lora"], "variants.lora: 'lora' is a method's own name"),
        ({}, ["lora", "lora_dora"], "config key methods.1: 'lora_dora' is not one of"),
        (
            {"v": {"method": "textual_inversion", "with_prior_preservation": True}},
            ["v"],
            "variants.v.with_prior_preservation: Textual Inversion has no prior-preservation loss",
        ),
    ],
)
def test_a_bad_variant_is_one_line_naming_its_key(variants, methods, expected):
    with pytest.raises(S2SError) as info:
        check_config({"subjects": TOY, "methods": methods, "variants": variants})
    assert expected in str(info.value)


def test_a_variant_has_its_own_rule_folder_and_row_in_the_dag(tmp_path):
    config = yaml.safe_load(TEST_CONFIG.read_text()) | {"results_dir": str(tmp_path / "results")}
    config["methods"] = ["lora", "lora_dora", "pivotal"]
    config["variants"] = {"lora_dora": {"method": "lora", "use_dora": True}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--cores", "1", "--configfile", str(tmp_path / "config.yaml")).stdout
    counts = job_counts(out)
    assert counts["train_lora"] == counts["train_lora_dora"] == counts["train_pivotal"] == 1, counts
    assert "train_textual_inversion" not in counts
    (block,) = job_blocks(out, "train_lora_dora")
    assert f"{tmp_path}/results/toy/models/lora_dora/pytorch_lora_weights.safetensors" in block
    evaluated = {b.split("method=")[1].split(",")[0].split("\n")[0] for b in job_blocks(out, "evaluate")}
    assert evaluated == {"base", "lora", "lora_dora", "pivotal"}


def test_a_variants_messages_name_the_key_the_user_wrote(tmp_path, tiny_sd, toy_instance):
    from diffusers import StableDiffusionPipeline

    from s2s import preflight
    from s2s.memory import check_fits, estimate, training_shape, ways_to_fit
    from s2s.train.loop import train
    from s2s.train.methods import make_method

    config = _variant_config(
        lora_fp16={"method": "lora", "mixed_precision": "fp16", "learning_rate": 0.5},
        piv={"method": "pivotal", "initializer_token": "teddybear"},
    )
    variant = train_config(config, "lora_fp16")
    assert variant.key("mixed_precision") == "variants.lora_fp16.mixed_precision"
    assert variant.key("learning_rate") == "variants.lora_fp16.learning_rate"
    assert variant.key("rank") == "training.lora.rank"  # inherited from its method's section
    assert variant.key("max_grad_norm") == "training.max_grad_norm"  # a shared key
    assert train_config(config, "lora").key("learning_rate") == "training.lora.learning_rate"
    # The config check before any job, the training loop, the method and the memory estimate.
    with pytest.raises(S2SError, match=r"^config key variants\.lora_fp16\.mixed_precision: fp16 needs"):
        preflight.check_precision({**config, "device": "cpu"})
    with pytest.raises(S2SError, match=r"^variants\.lora_fp16\.mixed_precision: fp16 needs a CUDA GPU"):
        train(variant, subject(config, "toy"), str(tiny_sd), toy_instance, tmp_path / "m", tmp_path / "c", 64,
              "a photo of sks toy", device="cpu")  # fmt: skip
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    method = make_method(train_config(config, "piv"), subject(config, "toy"))
    with pytest.raises(S2SError, match=r"^variants\.piv\.initializer_token: 'teddybear' is 6 tokens"):
        method.setup(pipe.unet, pipe.text_encoder, pipe.tokenizer)
    shape = training_shape(
        variant, pipe.unet, pipe.vae, pipe.text_encoder, 10**9, False, 512, True, "cuda", False
    )
    assert ways_to_fit(shape, 1.0)[0].startswith("variants.lora_fp16.gradient_checkpointing: true")
    with pytest.raises(S2SError, match=r"^training lora_fp16: estimated peak memory"):
        check_fits(estimate(shape), 1.0, "cuda:0")
