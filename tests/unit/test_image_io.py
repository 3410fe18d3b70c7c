"""components.image_io: finding files, bounded decoding, canonical bytes."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from components import contracts, image_io
from conftest import png_bytes


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int32)


def test_plain_png_and_jpeg_are_kept_byte_for_byte():
    png = png_bytes(1)
    jpg = _encode(_rgb(), "JPEG", quality=90)
    assert image_io.decode(png).data == png
    out = image_io.decode(jpg)
    assert out.data == jpg and not out.reencoded and (out.width, out.height) == (40, 30)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "TIFF"])
def test_other_formats_become_png_with_same_pixels(fmt):
    img = _rgb(2).convert("P").convert("RGB") if fmt == "GIF" else _rgb(2)
    data = _encode(img, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    out = image_io.decode(data)
    assert out.reencoded and out.data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(_pixels(out.data), _pixels(data))


def test_exif_rotation_is_applied():
    img = _rgb(3, size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = image_io.decode(_encode(img, "JPEG", exif=exif.tobytes()))
    assert out.reencoded and (out.width, out.height) == (20, 40)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200          # red under every pixel
    rgba[:5, :, 3] = 255        # top half opaque, bottom half transparent
    px = np.asarray(image_io.to_rgb(Image.fromarray(rgba, "RGBA")))
    assert tuple(px[0, 0]) == (200, 0, 0)
    assert tuple(px[9, 0]) == (255, 255, 255)
    # A palette PNG with transparency is not left to TF: converted here.
    out = image_io.decode(_encode(Image.fromarray(rgba, "RGBA").quantize(), "PNG"), min_side=10)
    assert out.reencoded
    assert tuple(_pixels(out.data)[9, 0]) == (255, 255, 255)


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"this is not an image at all", "not a recognised image format"),
    (os.urandom(4096), "not a recognised image format"),
])
def test_garbage_is_rejected_with_reason(data, reason):
    with pytest.raises(image_io.ImageRejected, match=reason):
        image_io.decode(data)


def test_truncated_image_is_rejected():
    data = _encode(_rgb(4, size=(200, 200)), "JPEG")
    with pytest.raises(image_io.ImageRejected, match="corrupt or truncated"):
        image_io.decode(data[: len(data) // 2])


def test_pixel_bomb_refused_before_decoding():
    # 30000 x 30000 grey PNG: small on disk, 900 MP when decoded.
    data = _encode(Image.new("1", (30000, 30000)), "PNG", optimize=True)
    assert len(data) < 2_000_000
    with pytest.raises(image_io.ImageRejected, match="exceeds the limit"):
        image_io.decode(data, max_pixels=50_000_000)


def test_walk_classifies_files(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.PNG").write_bytes(png_bytes(0))
    (tmp_path / "cat" / "notes.txt").write_text("x")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "cat" / "sub").mkdir()
    (tmp_path / "cat" / "sub" / "b.jpg").write_bytes(b"")
    (tmp_path / "cat" / "loop").symlink_to(tmp_path / "cat")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "stray.png").write_bytes(png_bytes(1))
    found = {item.relpath: item for item in image_io.walk_images(str(tmp_path))}
    assert isinstance(found["cat/a.PNG"], image_io.Candidate)
    assert isinstance(found["cat/sub/b.jpg"], image_io.Candidate)
    assert "unsupported extension" in found["cat/notes.txt"].reason
    assert "hidden" in found["cat/.DS_Store"].reason
    assert "symlink" in found["cat/loop"].reason
    assert "hidden" in found[".hidden/"].reason
    assert "directly under the images root" in found["stray.png"].reason
    assert image_io.list_label_folders(str(tmp_path)) == ["cat"]


def test_configured_pixel_limit_applies():
    data = png_bytes(5, size=(100, 100))
    assert image_io.decode(data, max_pixels=10_000).width == 100
    with pytest.raises(image_io.ImageRejected, match="100x101 = 10100 pixels exceeds the limit of 10000"):
        image_io.decode(png_bytes(5, size=(100, 101)), max_pixels=10_000)


def test_oversized_file_refused_before_reading(tmp_path):
    """A 3 GB sparse "PNG" (no disk used) is refused from its stat, never read."""
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_bytes(0))
    os.truncate(huge, 3 * 1024**3)
    with pytest.raises(image_io.ImageRejected,
                       match=f"file is {3 * 1024**3} bytes, over the limit of 50000000"):
        image_io.read_bytes(str(huge))
    small = tmp_path / "small.png"
    small.write_bytes(png_bytes(1))
    assert image_io.read_bytes(str(small), max_bytes=small.stat().st_size) == png_bytes(1)
    with pytest.raises(image_io.ImageRejected, match="over the limit of 10 "):
        image_io.read_bytes(str(small), max_bytes=10)


def test_tiny_image_refused_with_reason():
    with pytest.raises(image_io.ImageRejected,
                       match="1x1 is smaller than the minimum of 16 px on the short side"):
        image_io.decode(png_bytes(0, size=(1, 1)))
    assert image_io.decode(png_bytes(0, size=(40, 16))).height == 16
    assert image_io.decode(png_bytes(0, size=(4, 4)), min_side=4).width == 4


def test_symlinks_followed_only_inside_the_root(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "elsewhere"
    (root / "cat").mkdir(parents=True)
    outside.mkdir()
    (root / "cat" / "a.png").write_bytes(png_bytes(0))
    (outside / "b.png").write_bytes(png_bytes(1))
    (root / "cat" / "inside.png").symlink_to(root / "cat" / "a.png")
    (root / "cat" / "outside.png").symlink_to(outside / "b.png")
    (root / "cat" / "passwd.png").symlink_to("/etc/passwd")
    found = {i.relpath: i for i in image_io.walk_images(str(root))}
    assert isinstance(found["cat/inside.png"], image_io.Candidate)
    for rel in ("cat/outside.png", "cat/passwd.png"):
        assert found[rel].reason.startswith("symlink to a file outside the images root")
        assert "--follow-external-symlinks" in found[rel].reason
    allowed = {i.relpath: i for i in image_io.walk_images(str(root), follow_external_symlinks=True)}
    assert isinstance(allowed["cat/outside.png"], image_io.Candidate)


def test_empty_class_folder_is_reported(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(png_bytes(0))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    found = {i.relpath: i for i in image_io.walk_images(str(tmp_path))}
    assert found["empty/"].reason == image_io.EMPTY_CLASS_REASON
    assert found["notes/"].reason == image_io.EMPTY_CLASS_REASON
    assert "cat/" not in found


@pytest.mark.parametrize("ch", sorted(contracts.LINE_BREAKS))
def test_class_names_with_line_breaks_refused(ch):
    problem = image_io.label_problem(f"cat{ch}dog")
    assert problem and "contains a line break" in problem and f"U+{ord(ch):04X}" in problem
    assert "\n" not in problem and len(problem.splitlines()) == 1


@pytest.mark.parametrize("header", ["uri,label\n", ""])
def test_manifest_header_is_optional(tmp_path, header):
    """README: a CSV manifest's `uri,label` header row is optional; without it the
    first row is an image like any other."""
    for i in range(2):
        (tmp_path / "pics").mkdir(exist_ok=True)
        (tmp_path / "pics" / f"x{i}.png").write_bytes(png_bytes(700 + i))
    (tmp_path / "list.csv").write_text(header + "pics/x0.png,apple\npics/x1.png,pear\n")
    items = list(image_io.read_manifest(str(tmp_path / "list.csv")))
    assert [(i.relpath, i.label) for i in items] == [("pics/x0.png", "apple"), ("pics/x1.png", "pear")]
    assert all(isinstance(i, image_io.Candidate) for i in items)


def _signature_cases():
    """(name, encoded bytes): kept (PNG modes, JPEG RGB/L) and re-encoded images."""
    rgb = _rgb(5, size=(64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = np.asarray(rgb.convert("RGBA")).copy()
    rgba[:20, :, 3] = 0
    grey16 = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16))
    return [
        ("png-rgb", _encode(rgb, "PNG")),
        ("png-rgba", _encode(Image.fromarray(rgba, "RGBA"), "PNG")),
        ("png-la", _encode(Image.fromarray(rgba, "RGBA").convert("LA"), "PNG")),
        ("png-palette-transparent", _encode(Image.fromarray(rgba, "RGBA").quantize(), "PNG")),
        ("png-16-bit-grey", _encode(grey16, "PNG")),
        ("jpeg-rgb", _encode(rgb, "JPEG", quality=90)),
        ("jpeg-grey", _encode(rgb.convert("L"), "JPEG")),
        ("jpeg-exif-rotated", _encode(rgb, "JPEG", exif=exif.tobytes())),
        ("jpeg-cmyk", _encode(rgb.convert("CMYK"), "JPEG")),
        ("jpeg-large", _encode(_rgb(6, size=(1200, 900)), "JPEG", quality=85)),
        ("gif", _encode(rgb.convert("P"), "GIF")),
        ("webp", _encode(rgb, "WEBP", lossless=True)),
        ("bmp", _encode(rgb, "BMP")),
        ("tiff", _encode(rgb, "TIFF")),
    ]


@pytest.mark.parametrize("name,data", _signature_cases(), ids=[c[0] for c in _signature_cases()])
def test_signature_from_decoded_pixels_equals_signature_of_the_stored_bytes(name, data):
    """ImageExampleGen signs each image from the pixels image_io.decode loaded
    (pixel_signature.of_decoded); DataAudit used to sign the bytes ImageExampleGen
    stored: the signature must be the same, byte for byte."""
    from components import pixel_signature
    decoded = image_io.decode(data)
    ours = pixel_signature.of_decoded(decoded)
    assert ours is not None and ours.dtype == np.uint8 and ours.shape == (pixel_signature.DIM,)
    np.testing.assert_array_equal(ours, pixel_signature.signature(decoded.data))
    assert np.array_equal(pixel_signature.from_feature(pixel_signature.to_feature(ours)), ours)


def test_signature_feature_round_trip_and_absence():
    from components import pixel_signature
    assert pixel_signature.to_feature(None) == b""
    assert pixel_signature.from_feature(b"") is None
    assert pixel_signature.from_feature(b"\x00" * (pixel_signature.DIM - 1)) is None
