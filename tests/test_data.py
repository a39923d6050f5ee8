"""Preparing subject photos: every kind of bad or awkward input, checked up front, in one report."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from s2s.data import prepare_subject, scan_folder
from s2s.io import S2SError


def jpeg_with_orientation(path, orientation: int) -> None:
    """A 120x80 JPEG, red on the left half, stored with an EXIF orientation tag."""
    img = Image.new("RGB", (120, 80), "blue")
    img.paste((255, 0, 0), (0, 0, 60, 80))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, format="JPEG", exif=exif.tobytes(), quality=95)


def png_header(width: int, height: int) -> bytes:
    """A PNG of only its signature, header and end chunks: PIL reads its size without decoding pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def good_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (96, 80), "green").save(folder / "plain.png")
    return folder


def test_exif_rotation_is_applied(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    jpeg_with_orientation(folder / "rotated.jpg", 6)  # 6 = rotate 90 degrees clockwise to display
    out = prepare_subject(folder, tmp_path / "out", 64)
    arr = np.asarray(Image.open(out[0]))
    # Displayed upright, the red half is on top (the stored left half rotated clockwise).
    assert arr[5, 32, 0] > 200 and arr[5, 32, 2] < 60
    assert arr[58, 32, 2] > 200 and arr[58, 32, 0] < 60


def test_alpha_palette_grey_16bit_and_cmyk_become_rgb(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rgba = Image.new("RGBA", (80, 80), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(folder / "alpha.png")
    Image.new("L", (80, 80), 128).save(folder / "grey.png")
    pal = Image.new("P", (80, 80), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(folder / "palette_transparent.png", transparency=0)
    Image.fromarray(np.full((80, 80), 65535, dtype=np.uint16)).save(folder / "sixteen.png")
    Image.new("CMYK", (80, 80), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    out = prepare_subject(folder, tmp_path / "out", 64)
    by_source = dict(zip(sorted(p.name for p in folder.iterdir()), out))
    for path in out:
        img = Image.open(path)
        assert img.mode == "RGB" and img.size == (64, 64)
    assert np.asarray(Image.open(by_source["alpha.png"]))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(Image.open(by_source["palette_transparent.png"]))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(Image.open(by_source["grey.png"]))[0, 0].tolist() == [128, 128, 128]
    assert np.asarray(Image.open(by_source["sixteen.png"]))[0, 0].tolist() == [255, 255, 255]
    red = np.asarray(Image.open(by_source["cmyk.jpg"]))[0, 0]
    assert red[0] > 200 and red[1] < 60


def test_every_problem_is_reported_at_once_and_nothing_is_written(tmp_path):
    folder = good_folder(tmp_path)
    (folder / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (200, 200), "red").save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "not_an_image.png").write_text("hello")
    (folder / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    gif = io.BytesIO()
    Image.new("RGB", (90, 90)).save(gif, format="GIF")
    (folder / "renamed_gif.jpg").write_bytes(gif.getvalue())
    (folder / "gone.jpg").symlink_to(tmp_path / "moved_away.jpg")
    (folder / "huge.png").write_bytes(png_header(20000, 10000))  # 200 megapixels: over PIL's bomb limit
    Image.new("RGB", (80, 80), "blue").save(folder / "png_named.jpg", "PNG")  # fine: the content decides
    with pytest.raises(S2SError) as info:
        prepare_subject(folder, tmp_path / "out", 64)
    message = str(info.value)
    for name, reason in [
        ("empty.jpg", "empty file"),
        ("truncated.jpg", "truncated"),
        ("not_an_image.png", "not a readable image"),
        ("photo.heic", ".heic images are not supported"),
        ("renamed_gif.jpg", "format GIF is not supported"),
        ("gone.jpg", "cannot be read (No such file or directory)"),
        ("huge.png", "too large to decode safely"),
    ]:
        line = next((ln for ln in message.splitlines() if name in ln), "")
        assert reason in line, (name, message)
    assert "7 problem(s)" in message
    assert "plain.png" not in message and "png_named.jpg" not in message
    assert not (tmp_path / "out").exists()  # no half-written output


def test_hidden_and_non_image_files_are_skipped_with_a_note(tmp_path, caplog):
    folder = good_folder(tmp_path)
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "notes.txt").write_text("my dog")
    with caplog.at_level("INFO"):
        out = prepare_subject(folder, tmp_path / "out", 64)
    assert len(out) == 1
    assert ".DS_Store" in caplog.text and "notes.txt" in caplog.text


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(S2SError, match="no images found"):
        prepare_subject(tmp_path / "photos", tmp_path / "out", 64)
    assert not (tmp_path / "out").exists()


def test_small_images_upscale_with_warning_or_reject(tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (40, 30), "red").save(folder / "tiny.png")
    with caplog.at_level("WARNING"):
        out = prepare_subject(folder, tmp_path / "out", 64, small_images="upscale")
    assert Image.open(out[0]).size == (64, 64) and "tiny.png" in caplog.text and "upscaled" in caplog.text
    with pytest.raises(S2SError, match=r"tiny.png: 40x30 is smaller than the model resolution 64"):
        prepare_subject(folder, tmp_path / "out2", 64, small_images="reject")


def test_awkward_file_names(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ["Akita-inu (2).jpg", "a dog with spaces.png", "perro_añejo_秋田.jpeg"]:
        Image.new("RGB", (70, 90), "red").save(folder / name)
    out = prepare_subject(folder, tmp_path / "out", 64)
    assert len(out) == 3
    import json

    sources = json.loads((tmp_path / "out" / "sources.json").read_text())["images"]
    assert sorted(sources.values()) == sorted(p.name for p in folder.iterdir())


def test_centre_crop_keeps_the_middle(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    img = Image.new("RGB", (300, 100), "black")
    img.paste((255, 255, 255), (100, 0, 200, 100))  # white square in the centre
    img.save(folder / "wide.png")
    out = prepare_subject(folder, tmp_path / "out", 64)
    arr = np.asarray(Image.open(out[0]))
    assert arr.min() > 240  # only the white centre survives


@pytest.mark.shared_data
def test_the_shared_dog_photos_all_prepare(shared_data, tmp_path):
    report = scan_folder(shared_data / "subjects" / "dog", 512)
    assert not report.problems
    out = prepare_subject(shared_data / "subjects" / "dog", tmp_path / "dog", 128)
    assert len(out) == len(report.images) == 17
