"""What the Snakefile checks and imports when it is read: photo folders and edit manifest rows refused
with one line before any job runs, and a parse path free of torch, diffusers and transformers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from s2s import manifest, plan
from s2s.config import check_config
from s2s.io import S2SError

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "PIL", "accelerate", "peft")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


def photo_folder(folder: Path, count: int, content: bytes = PNG, suffix: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i}{suffix}").write_bytes(content)
    return folder


def subject_config(folder: Path, **extra) -> dict:
    return {"subjects": {"dog": {"class": "dog", "images": str(folder)}}, **extra}


def one_line_error(config: dict, base_dir: Path) -> str:
    with pytest.raises(S2SError) as info:
        check_config(config, base_dir=base_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- subject photos


def test_photo_count_within_the_default_range_is_accepted(tmp_path):
    for count in (5, 20):
        folder = photo_folder(tmp_path / f"n{count}", count)
        assert check_config(subject_config(folder), base_dir=tmp_path)["data"]["min_photos"] == 5


@pytest.mark.parametrize("count", [1, 4, 21])
def test_photo_count_outside_the_range_is_refused(tmp_path, count):
    folder = photo_folder(tmp_path / "dog", count)
    message = one_line_error(subject_config(folder), tmp_path)
    assert f"subjects.dog.images: folder {folder} holds {count} photo(s); give 5 to 20" in message


def test_photo_range_is_configurable(tmp_path):
    folder = photo_folder(tmp_path / "dog", 1)
    check_config(subject_config(folder, data={"min_photos": 1}), base_dir=tmp_path)
    message = one_line_error(
        subject_config(photo_folder(tmp_path / "six", 6), data={"max_photos": 5}), tmp_path
    )
    assert "holds 6 photo(s); give 5 to 5" in message


def test_empty_folder_is_named(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a photo")
    message = one_line_error(subject_config(folder), tmp_path)
    assert f"subjects.dog.images: folder {folder} holds no photos" in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "empty file (0 bytes)"), (b"<html>not a photo</html>", "not a readable image")],
)
def test_unreadable_photo_is_named(tmp_path, content, problem):
    folder = photo_folder(tmp_path / "dog", 6)
    (folder / "bad.jpg").write_bytes(content)
    message = one_line_error(subject_config(folder), tmp_path)
    assert f"subjects.dog.images: {folder / 'bad.jpg'}: {problem}" in message


def test_every_bad_photo_of_a_folder_is_named_in_one_error(tmp_path):
    from PIL import Image

    folder = tmp_path / "dog"
    folder.mkdir()
    # Fine photos, one of them a PNG saved under a .jpg name (the content decides, as when decoding).
    fine = [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("PNG", ".jpg")]
    for i, (fmt, suffix) in enumerate(fine):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"fine_{i}{suffix}", fmt)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "page.png").write_text("<html>not a photo</html>")
    Image.new("RGB", (8, 8)).save(folder / "renamed_gif.jpeg", "GIF")
    (folder / "zeros.webp").write_bytes(b"\x00" * 64)
    (folder / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")  # refused by the prepare job too
    (folder / "gone.jpg").symlink_to(tmp_path / "moved_away.jpg")
    message = one_line_error(subject_config(folder, data={"min_photos": 1}), tmp_path)
    assert message.startswith(f"config key subjects.dog.images: 6 problems in folder {folder}: (1) ")
    expected = [
        ("empty.jpg", "empty file (0 bytes)"),
        ("gone.jpg", "cannot be read (No such file or directory)"),
        ("page.png", "not a readable image"),
        ("renamed_gif.jpeg", "not a readable image"),
        ("zeros.webp", "not a readable image"),
        ("photo.heic", ".heic images are not supported (convert to JPEG, PNG or WebP)"),
    ]
    for name, problem in expected:
        assert f"{folder / name}: {problem}" in message, (name, message)
    assert "fine_" not in message
    assert message.endswith("replace or remove each bad photo")
    # An out-of-range count is one more problem of the same line, not a second run.
    message = one_line_error(subject_config(folder, data={"min_photos": 10}), tmp_path)
    assert "7 problems" in message and "holds 9 photo(s); give 10 to 20" in message
    assert all(str(folder / name) in message for name, _ in expected) and "fine_" not in message


def test_real_photos_pass_the_header_check(tmp_path):
    from PIL import Image

    folder = tmp_path / "dog"
    folder.mkdir()
    # The content decides, as when the photos are decoded: the study's folder has a WebP named .jpg.
    formats = [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("WEBP", ".jpg"), ("PNG", ".jpeg")]
    for i, (fmt, suffix) in enumerate(formats):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(folder / f"{i}{suffix}", fmt)
    check_config(subject_config(folder), base_dir=tmp_path)
    Image.new("RGB", (8, 8)).save(folder / "renamed_gif.jpg", "GIF")
    message = one_line_error(subject_config(folder), tmp_path)
    assert "renamed_gif.jpg: not a readable image" in message


# ---------------------------------------------------------------- edit manifest rows

HEADER = "edit_id,image,source_prompt,target_prompt,edit,params,model,inversion\n"


def manifest_error(tmp_path: Path, rows: str, **extra) -> str:
    manifest = tmp_path / "edits.csv"
    manifest.write_text(HEADER + rows)
    config = {
        "subjects": {"toy": {"synthetic": True, "class": "toy"}},
        "edits": {"manifest": str(manifest)},
        **extra,
    }
    return one_line_error(config, tmp_path)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("a,,a dog,a cat,replcae,,,", "row 1, column 'edit': unknown edit 'replcae'; use one of replace"),
        (
            "a,,a dog,a big cat,replace,,,",
            "row 1, column 'target_prompt': replace edit needs prompts with the same",
        ),
        ("a,,a dog,a big dog,reweight,,,", "row 1, column 'params': reweight edit needs 'equalizer'"),
        (
            'a,,a dog,a big dog,reweight,"{""equalizer"": {""cat"": 2}}",,',
            "row 1, column 'params': equalizer word 'cat' is not in the prompt 'a big dog'",
        ),
        (
            'a,,a dog,a cat,replace,"{""blend_words"": [""horse""]}",,',
            "row 1, column 'params': blend_words ['horse'] occur in neither",
        ),
        (
            'a,,a dog,a cat,replace,"{""keep_words"": [""horse""]}",,',
            "row 1, column 'params': keep_words ['horse'] occur in neither",
        ),
        (
            'a,,a dog,a cat,replace,"{""cross_replace_steps"": {""horse"": 0.5}}",,',
            "cross_replace_steps word 'horse' is not in the target prompt",
        ),
        ("a,,a dog,a cat,replace,,hypernet,", "row 1, column 'model': 'hypernet' is not a model this run"),
        (
            "a,,a dog,a sks dog,subject,,base,",
            "row 1, column 'model': a subject edit needs a trained subject",
        ),
        ("a,missing.png,a dog,a cat,replace,,,", "row 1, column 'image':"),
        ("a,,a dog,a cat,replace,,,inverse", "row 1, column 'inversion': unknown inversion 'inverse'"),
        ("a,,a dog,a cat,replace,,,\na,,a dog,a fox,replace,,,", "row 2, column 'edit_id': 'a' is also"),
        ("../x,,a dog,a cat,replace,,,", "row 1, column 'edit_id':"),
        ("a,,a dog,,replace,,,", "row 1, column 'target_prompt': missing"),
    ],
)
def test_bad_manifest_row_is_refused_when_the_config_is_read(tmp_path, row, expected):
    message = manifest_error(tmp_path, row + "\n")
    assert message.startswith(f"{tmp_path / 'edits.csv'}, row ")
    assert expected in message


def test_manifest_model_must_be_trained_in_this_run(tmp_path):
    message = manifest_error(tmp_path, "a,,a toy,a sks toy,subject,,dreambooth,\n", methods=["lora"])
    assert message == (
        f"{tmp_path / 'edits.csv'}, row 1, column 'model': 'dreambooth' is not a model this run trains; use "
        "base or one of the methods and variants of config key methods: lora"
    )
    manifest = tmp_path / "edits.csv"
    config = {
        "subjects": {"toy": {"synthetic": True, "class": "toy"}},
        "methods": ["dreambooth"],
        "edits": {"manifest": str(manifest)},
    }
    check_config(config, base_dir=tmp_path)


def test_a_variant_the_run_trains_is_a_manifest_model(tmp_path):
    """A row's model, and edits.subject_model, may be any method or variant of methods: (issue 22)."""
    lora_dora = {"lora_dora": {"method": "lora", "use_dora": True}}
    rows = "a,,a toy,a sks toy,subject,,lora_dora,\nb,,a toy,a sks toy,subject,,,\n"
    manifest = tmp_path / "edits.csv"
    manifest.write_text(HEADER + rows)
    config = {
        "subjects": {"toy": {"synthetic": True, "class": "toy"}},
        "methods": ["pivotal", "lora_dora"],
        "variants": lora_dora,
        "edits": {"manifest": str(manifest), "subject_model": "lora_dora"},
    }
    checked = check_config(config, base_dir=tmp_path)
    planned = plan.plan_manifest(manifest, checked["edits"]["subject_model"])
    assert [row["model"] for row in planned] == ["lora_dora", "lora_dora"]
    # A variant the run does not train, and a default the run does not train: the file, row and the names.
    message = manifest_error(tmp_path, rows, methods=["pivotal"], variants=lora_dora)
    assert message == (
        f"{manifest}, row 1, column 'model': 'lora_dora' is not a model this run trains; use base or one of "
        "the methods and variants of config key methods: pivotal"
    )
    message = manifest_error(tmp_path, "b,,a toy,a sks toy,subject,,,\n", methods=["pivotal"])
    assert message == (
        f"{manifest}, row 1, column 'model': 'lora' (the default, config key edits.subject_model) is not a "
        "model this run trains; use base or one of the methods and variants of config key methods: pivotal"
    )


def test_manifest_image_is_checked_cheaply(tmp_path):
    (tmp_path / "photo.png").write_bytes(PNG)
    (tmp_path / "broken.png").write_bytes(b"nope")
    manifest_rows = "a,photo.png,a dog,a cat,replace,,,\nb,broken.png,a dog,a fox,replace,,,\n"
    message = manifest_error(tmp_path, manifest_rows)
    assert (
        "row 2, column 'image':" in message and "broken.png" in message and "not a readable image" in message
    )


def test_shipped_demo_manifest_passes():
    config = check_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), base_dir=REPO)
    assert config["edits"]["manifest"]


def test_plan_names_match_the_torch_modules():
    from s2s.edit.controllers import EDITS
    from s2s.edit.inversion import INVERSIONS
    from s2s.models import SAMPLE_METHODS

    names = (manifest.EDIT_TYPES, manifest.INVERSION_NAMES, plan.MODEL_NAMES)
    assert names == (EDITS, INVERSIONS, SAMPLE_METHODS)


def test_bad_manifest_row_stops_the_dry_run(tmp_path):
    manifest = tmp_path / "edits.csv"
    manifest.write_text(HEADER + "a,,a dog,a cat,replcae,,,\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "edits": {"manifest": str(manifest)}}
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(config), "--directory", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert (
        "s2s config error: " in proc.stderr + proc.stdout
        and "unknown edit 'replcae'" in proc.stderr + proc.stdout
    )


# ---------------------------------------------------------------- the parse path imports no torch


def test_modules_the_rules_import_are_torch_free():
    code = (
        f"import sys, s2s.config, s2s.plan, s2s.io; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_demo_dry_run_with_torch_unimportable(tmp_path):
    # A None entry in sys.modules makes `import torch` fail, as in an environment without it.
    code = (
        "import sys\n"
        f"for name in {HEAVY!r}: sys.modules[name] = None\n"
        "from snakemake.cli import main\n"
        f"sys.argv = ['snakemake', '-n', '--cores', '1', '-s', {str(REPO / 'Snakefile')!r}, "
        f"'--directory', {str(tmp_path)!r}]\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rule train_lora:" in proc.stdout


def pinned(name: str) -> str:
    """The requirement pinned in pyproject.toml, e.g. snakemake==9.27.1."""
    return re.search(rf'"({re.escape(name)}==[^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)


@pytest.mark.slow
def test_paper_dry_run_in_an_environment_with_snakemake_alone(tmp_path):
    """A venv with only the pinned snakemake and its SLURM plugin (pyyaml, jsonschema and yte come with
    them) dry-runs the paper config, plain and with the SLURM profile, under 3 s of parse each."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            pinned("snakemake"),
            pinned("snakemake-executor-plugin-slurm"),
        ],
        check=True,
    )
    missing = subprocess.run(
        [
            str(python),
            "-c",
            f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert missing.stdout.strip() == "[]"
    photos = photo_folder(tmp_path / "dog", 6)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump({"subjects": {"dog": {"images": str(photos), "class": "dog", "token": "sks"}}})
    )
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(REPO / "config", work / "config")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "0"  # a dry run downloads nothing; offline, the preflight wants SD v1.4 cached
    for extra in ([], ["--profile", str(REPO / "profiles" / "slurm")]):
        started = time.perf_counter()
        proc = subprocess.run(
            [
                str(venv / "bin" / "snakemake"),
                "-n",
                "--cores",
                "1",
                "-s",
                str(REPO / "Snakefile"),
                "--directory",
                str(work),
                "--configfile",
                str(REPO / "config" / "paper.yaml"),
                str(overlay),
                *extra,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        seconds = time.perf_counter() - started
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "rule train_lora:" in proc.stdout and "rule sample:" in proc.stdout
        print(f"paper dry run {'with the SLURM profile ' if extra else ''}in {seconds:.1f} s")
