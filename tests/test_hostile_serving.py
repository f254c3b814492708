"""Hostile requests to the served models: decompression bombs, paths outside the input folder,
photos ingestion refuses, requests too large.

Every refusal must be a clean HTTP 400 whose body names the problem and the limit and holds
no stack trace, no server path and no path from the request. The unit tests call
`images_from_input` directly; one end-to-end test serves a tiny `tuber-quality` model
(random weights: only the input handling and the shape of the answer are under test) with
`mlflow models serve`.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from conftest import http, served
from tubervae.classify import AnyOfRule, ThresholdRule
from tubervae.data.images import inspect_image, load_model_input
from tubervae.models.nets import VAE
from tubervae.runs import quality_model, quality_model_code, serving
from tubervae.runs.quality_model import TuberQualityModel
from tubervae.runs.registry import PIP_REQUIREMENTS
from tubervae.runs.serving import BadRequest, InputLimits, images_from_input

PROJECT = Path(__file__).resolve().parents[1]
SIZE = 16
CROP = 0.8
PEAK_RSS_LIMIT = 1.2e9  # bytes; the 10 000×10 000 bomb used to take the worker from 0.86 to 1.78 GB


# ------------------------------------------------------------------ hostile inputs


def png_bytes(width: int, height: int, *, color_type: int = 3, bit_depth: int = 8) -> bytes:
    """A valid all-black PNG of any size, built row by row: a huge one compresses ~1000:1.

    color_type 3 is an 8-bit palette (decodes to width×height bytes, then ×3 as RGB);
    0 with bit_depth 1 is a 1-bit image (the cheapest to build).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    palette = chunk(b"PLTE", bytes(3)) if color_type == 3 else b""
    row = 1 + (width * bit_depth + 7) // 8  # filter byte + one channel
    compressor = zlib.compressobj(9)
    block = bytes(row * 256)
    data = [compressor.compress(block[: row * min(256, height - y)]) for y in range(0, height, 256)]
    data.append(compressor.flush())
    idat = chunk(b"IDAT", b"".join(data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + palette + idat + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bombs():
    """10 000×10 000 palette PNG (~100 KB; 10^8 pixels: 0.3 GB as RGB, between Pillow's warning and its
    hard limit) and 20 000×20 000 1-bit PNG (~50 KB; over Pillow's hard limit), base64-encoded."""
    return {
        "big": base64.b64encode(png_bytes(10_000, 10_000)).decode(),
        "huge": base64.b64encode(png_bytes(20_000, 20_000, color_type=0, bit_depth=1)).decode(),
    }


def encoded(img: Image.Image, fmt: str = "PNG", **save) -> str:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def colour_photo(seed: int = 0, size=(50, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def camera(mode: str = "L") -> Image.Image:
    """A grayscale photo (like skimage's camera.png) in `mode`."""
    ramp = np.add.outer(np.arange(48), np.arange(64)).astype(np.float32) / 110
    if mode == "1":
        return Image.fromarray(ramp > 0.5)
    if mode == "I;16":
        return Image.fromarray((ramp * 65535).astype(np.uint16))
    if mode == "F":
        return Image.fromarray(ramp)
    return Image.fromarray((ramp * 255).astype(np.uint8)).convert(mode)


def grade(frame_or_array, limits: InputLimits | None = None) -> np.ndarray:
    return images_from_input(frame_or_array, crop_fraction=CROP, image_size=SIZE, limits=limits or InputLimits())


def refusal(frame_or_array, limits: InputLimits | None = None, *forbidden: str) -> str:
    """The message of the 400 this input gets, checked to be clean (also against `forbidden` strings)."""
    with pytest.raises(MlflowException) as info:
        grade(frame_or_array, limits)
    assert isinstance(info.value, BadRequest) and info.value.get_http_status_code() == 400
    body = json.loads(info.value.serialize_as_json())
    assert body["error_code"] == "INVALID_PARAMETER_VALUE" and "stack_trace" not in body
    assert_clean(body["message"], *forbidden)
    return body["message"]


def assert_clean(text: str, *forbidden: str) -> None:
    for word in ("Traceback", 'File "', "site-packages", "/etc", str(PROJECT), *forbidden):
        assert word not in text, f"{word!r} in {text!r}"


# ------------------------------------------------------------------ settings


def test_limits_have_sane_defaults_and_come_from_the_environment(tmp_path):
    default = InputLimits.from_env({})
    assert default == InputLimits() and default.input_folder is None
    assert 640 * 480 * 16 <= default.max_pixels <= 5 * 10**7
    assert default.max_images == 64 and default.max_base64_bytes == 64 * 2**20
    limits = InputLimits.from_env(
        {
            "TUBERVAE_MAX_PIXELS": "1000000",
            "TUBERVAE_MAX_IMAGES": "3",
            "TUBERVAE_MAX_BASE64_BYTES": "5000",
            "TUBERVAE_INPUT_FOLDER": str(tmp_path / "." / ""),
        }
    )
    assert (limits.max_pixels, limits.max_images, limits.max_base64_bytes) == (1_000_000, 3, 5000)
    assert limits.input_folder == tmp_path.resolve()
    for name, value in [
        ("TUBERVAE_MAX_PIXELS", "4096x4096"),
        ("TUBERVAE_MAX_IMAGES", "0"),
        ("TUBERVAE_MAX_BASE64_BYTES", "-1"),
        ("TUBERVAE_MAX_PIXELS", str(10**9)),  # above Pillow's own guard: would never be reached
        ("TUBERVAE_INPUT_FOLDER", str(tmp_path / "missing")),
    ]:
        with pytest.raises(ValueError, match=name):
            InputLimits.from_env({name: value})


def test_the_models_read_the_limits_when_they_load(tmp_path, monkeypatch):
    context = SimpleNamespace(artifacts=tiny_quality_artifacts(tmp_path))
    model = TuberQualityModel()
    monkeypatch.setenv("TUBERVAE_MAX_IMAGES", "2")
    monkeypatch.setenv("TUBERVAE_INPUT_FOLDER", str(tmp_path))
    model.load_context(context)
    monkeypatch.delenv("TUBERVAE_MAX_IMAGES")  # read at load time: later changes do not count
    photo = np.asarray(colour_photo())
    assert len(model.predict(context, np.stack([photo, photo]))) == 2
    with pytest.raises(BadRequest, match="too many images: 3 in one request; the limit is 2"):
        model.predict(context, np.stack([photo] * 3))
    colour_photo().save(tmp_path / "tuber.png")
    assert len(model.predict(context, pd.DataFrame({"path": ["tuber.png", str(tmp_path / "tuber.png")]}))) == 2


# ------------------------------------------------------------------ decompression bombs


def test_a_bomb_is_refused_from_its_header_before_decoding(bombs):
    message = refusal(pd.DataFrame({"image_base64": [bombs["big"]]}))
    assert message == (
        "row 0: image too large: 10000×10000 = 100000000 pixels; the limit is 16777216 pixels (width × height) "
        "per image"
    )
    message = refusal(pd.DataFrame({"image_base64": [encoded(colour_photo()), bombs["huge"]]}))
    assert message.startswith("row 1: image too large: over ") and "the limit is 16777216 pixels" in message


def test_the_pixel_limit_is_a_setting_and_covers_arrays_too():
    small = InputLimits(max_pixels=1999)
    message = refusal(pd.DataFrame({"image_base64": [encoded(colour_photo(size=(50, 40)))]}), small)
    assert message.startswith("row 0: image too large: 50×40 = 2000 pixels; the limit is 1999 pixels")
    assert grade(pd.DataFrame({"image_base64": [encoded(colour_photo(size=(50, 39)))]}), small).shape == (1, 16, 16, 3)
    assert refusal(np.zeros((40, 50, 3), np.uint8), small).startswith("array: image too large: 50×40 = 2000 pixels")


def test_broken_and_foreign_files_get_a_message_without_pillows_text():
    png = base64.b64decode(encoded(colour_photo()))
    cases = {
        "truncated": base64.b64encode(png[: len(png) // 2]).decode(),
        "not an image": base64.b64encode(b"just some text, not a picture").decode(),
        "GIF": encoded(colour_photo(), "GIF"),  # a format ingestion does not read
        "EPS": base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n").decode(),
    }
    for name, text in cases.items():
        message = refusal(pd.DataFrame({"image_base64": [text]}), None, "BytesIO", "cannot identify")
        assert message.startswith("row 0: not a readable image"), name
    assert "truncated" in refusal(pd.DataFrame({"image_base64": [cases["truncated"]]}))
    assert refusal(pd.DataFrame({"image_base64": ["%%% not base64"]})) == "row 0: image_base64 is not valid base64"
    assert "must be a string" in refusal(pd.DataFrame({"image_base64": [None]}))


# ------------------------------------------------------------------ request size


def test_too_many_images_are_refused_before_anything_is_decoded():
    message = refusal(pd.DataFrame({"image_base64": ["%%% not base64"] * 65}))
    assert message == "too many images: 65 in one request; the limit is 64 per request"
    assert "the limit is 64" in refusal(pd.DataFrame({"path": ["/etc/passwd"] * 65}))
    assert "too many images: 65" in refusal(np.zeros((65, 8, 8, 3), np.uint8))
    assert "too many images: 3" in refusal(np.zeros((3, 8, 8, 3), np.uint8), InputLimits(max_images=2))
    assert grade(np.zeros((0, 8, 8, 3), np.float32)).shape == (0, SIZE, SIZE, 3)


def test_too_large_a_payload_is_refused_before_anything_is_decoded():
    limits = InputLimits(max_base64_bytes=1000)
    message = refusal(pd.DataFrame({"image_base64": ["A" * 600, "%" * 600]}), limits)
    assert message == "request too large: 1200 characters of image_base64; the limit is 1000 per request"
    assert grade(pd.DataFrame({"image_base64": [encoded(colour_photo(size=(8, 8)))]}), limits).shape[0] == 1


# ------------------------------------------------------------------ paths


@pytest.fixture
def folders(tmp_path):
    """allowed/ (the input folder: a photo, a sub-folder, a link inside, a link outside) and outside/ (a photo)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    colour_photo(1).save(allowed / "tuber.png")
    colour_photo(2).save(outside / "secret.png")
    (allowed / "inner_link.png").symlink_to(allowed / "tuber.png")
    (allowed / "sub" / "escape.png").symlink_to(outside / "secret.png")
    (allowed / "loop.png").symlink_to(allowed / "loop.png")
    return {"tmp": tmp_path, "allowed": allowed, "outside": outside}


HOSTILE_PATHS = [
    "/etc/passwd",
    "/etc/shadow",
    "/etc/does-not-exist",
    "../outside/secret.png",
    "sub/../../outside/secret.png",
    "sub/escape.png",  # a link leading outside
    "loop.png",
    "missing.png",
    "sub",  # a folder
    "",
    "tuber.png\0.txt",
]


def test_a_request_with_both_a_path_and_image_base64_is_refused_naming_both(folders):
    """Never answered from one column while the other is ignored: the sender learns which photos were meant."""
    limits = InputLimits.from_env({"TUBERVAE_INPUT_FOLDER": str(folders["allowed"])})
    photo = encoded(colour_photo(1))
    for frame in (
        pd.DataFrame({"path": ["tuber.png"], "image_base64": [photo]}),
        pd.DataFrame({"image_base64": [photo, None], "path": [None, "tuber.png"]}),  # one column per row
    ):
        message = refusal(frame, limits, str(folders["tmp"]))
        assert message == ("the request has both a 'path' and an 'image_base64' column: send the photos in one of them")
    assert grade(pd.DataFrame({"path": ["tuber.png"]}), limits).shape == (1, SIZE, SIZE, 3)  # either alone is fine


def test_the_path_input_is_off_unless_an_input_folder_is_set(folders):
    for path in [*HOSTILE_PATHS, str(folders["allowed"] / "tuber.png")]:
        message = refusal(pd.DataFrame({"path": [path]}), None, str(folders["tmp"]))
        assert message.startswith("the 'path' input is turned off on this server") and "image_base64" in message


def test_paths_outside_the_input_folder_get_one_answer_whether_they_exist_or_not(folders):
    limits = InputLimits.from_env({"TUBERVAE_INPUT_FOLDER": str(folders["allowed"])})
    absolute_outside = str(folders["outside"] / "secret.png")
    answers = {
        path: refusal(pd.DataFrame({"path": [path]}), limits, str(folders["tmp"]), "secret", "shadow", "passwd")
        for path in [*HOSTILE_PATHS, absolute_outside, None, 3.5]
    }
    assert set(answers.values()) == {
        "row 0: path refused: it must name an existing image file inside the server's input folder"
    }
    # Inside the folder: relative, absolute, and through a link that stays inside.
    expected = load_model_input(colour_photo(1), crop_fraction=CROP, image_size=SIZE)
    inside = ["tuber.png", str(folders["allowed"] / "tuber.png"), "inner_link.png", "sub/../tuber.png"]
    for got in grade(pd.DataFrame({"path": inside}), limits):
        np.testing.assert_array_equal(got, expected)
    # A file inside the folder that is no image: the folder is the client's to read, the answer may say so.
    (folders["allowed"] / "notes.png").write_text("not a picture")
    message = refusal(pd.DataFrame({"path": ["tuber.png", "notes.png"]}), limits, "notes")
    assert message.startswith("row 1: not a readable image")


# ------------------------------------------------------------------ colour modes, as ingestion


@pytest.mark.parametrize("mode", ["L", "LA", "1", "I;16", "I", "F"])
def test_grayscale_and_16_bit_photos_are_refused_like_ingestion(mode, tmp_path):
    img = camera(mode)
    fmt = "TIFF" if mode in ("I", "F") else "PNG"
    img.save(tmp_path / f"camera.{fmt.lower()}", fmt)
    assert inspect_image(tmp_path / f"camera.{fmt.lower()}").status == "rejected"
    opened_mode = Image.open(tmp_path / f"camera.{fmt.lower()}").mode
    message = refusal(pd.DataFrame({"image_base64": [encoded(img, fmt)]}))
    assert message.startswith(f"row 0: colour mode {opened_mode} is refused") and "RGB" in message


def test_rgba_palette_and_cmyk_photos_are_converted_like_ingestion(tmp_path):
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (480, 640, 4), dtype=np.uint8), "RGBA")
    palette = colour_photo(4, (640, 480)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    cases = {"rgba.png": (rgba, "PNG"), "palette.png": (palette, "PNG"), "cmyk.tif": (rgba.convert("CMYK"), "TIFF")}
    for name, (img, fmt) in cases.items():
        img.save(tmp_path / name, fmt)
        inspection = inspect_image(tmp_path / name)
        assert inspection.status == "converted", name
        expected = load_model_input(inspection.image, crop_fraction=CROP, image_size=SIZE)
        got = grade(pd.DataFrame({"image_base64": [base64.b64encode((tmp_path / name).read_bytes()).decode()]}))
        np.testing.assert_array_equal(got[0], expected, err_msg=name)
    # Alpha is composited on black, not dropped.
    dropped = load_model_input(rgba.convert("RGB"), crop_fraction=CROP, image_size=SIZE)
    assert not np.array_equal(grade(pd.DataFrame({"image_base64": [encoded(rgba)]}))[0], dropped)


# ------------------------------------------------------------------ what the server sends back


def test_mlflows_rewrite_of_the_message_does_not_reach_the_body():
    error = serving.bad_input("row 0: image too large")
    error.message = "Failed to predict data '   path\n0  /srv/photos/x.png'. \nError: " + error.message
    body = json.loads(error.serialize_as_json())
    assert body["message"] == "row 0: image too large" and body["error_code"] == "INVALID_PARAMETER_VALUE"


def test_an_internal_failure_is_a_500_without_its_traceback(tmp_path, monkeypatch):
    context = SimpleNamespace(artifacts=tiny_quality_artifacts(tmp_path))
    model = TuberQualityModel()
    model.load_context(context)

    def broken(*args, **kwargs):
        raise RuntimeError(f"exploded in {tmp_path}/secret.py")

    monkeypatch.setattr(quality_model, "encode", broken)  # where TuberQualityModel looks it up
    with pytest.raises(BadRequest) as info:
        model.predict(context, np.zeros((1, 8, 8, 3), np.uint8))
    assert info.value.get_http_status_code() == 500 and isinstance(info.value.__cause__, RuntimeError)
    body = json.loads(info.value.serialize_as_json())
    assert body["error_code"] == "INTERNAL_ERROR" and "stack_trace" not in body
    assert body["message"] == "internal error while scoring the request; the server's log has the details"
    assert_clean(json.dumps(body), str(tmp_path), "exploded")


# ------------------------------------------------------------------ end to end


TINY_RULE = AnyOfRule(
    (ThresholdRule(0, 0.0, "bad_if_above", 0.5), ThresholdRule(2, 0.0, "bad_if_below", 0.5)),
    scales=(1.0, 2.0),
    train_balanced_accuracy=0.5,
)


def tiny_quality_artifacts(folder: Path) -> dict[str, str]:
    torch.manual_seed(0)
    vae = VAE(image_size=SIZE, latent_dim=4)
    config = {"image_size": SIZE, "latent_dim": 4, "crop_fraction": CROP}
    return quality_model.quality_model_artifacts(folder, vae, config, TINY_RULE)


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def peak_rss(pid: int) -> int:
    """The largest VmHWM (peak resident memory) in the process tree under `pid`, in bytes."""
    peak = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from /proc")
@pytest.mark.slow
def test_served_classifier_refuses_hostile_requests_cleanly_and_stays_small(bombs, folders):
    tmp = folders["tmp"]
    model_dir = tmp / "model"
    artifacts_dir = tmp / "artifacts"
    artifacts_dir.mkdir()
    mlflow.pyfunc.save_model(
        path=str(model_dir),
        python_model=str(quality_model_code.CODE),  # from code, served from the installed package, as classify logs it
        artifacts=tiny_quality_artifacts(artifacts_dir),
        pip_requirements=PIP_REQUIREMENTS,
        signature=quality_model.quality_signature(TINY_RULE),  # as the classify stage logs it: MLflow checks it first
        input_example=serving.photo_example(None, SIZE),
    )
    assert not list(model_dir.rglob("*.pkl")) and not (model_dir / "code").exists()  # no pickle, no package copy
    env = {"TUBERVAE_INPUT_FOLDER": str(folders["allowed"]), "TUBERVAE_MAX_BASE64_BYTES": "1000000"}
    with served(model_dir, env, tmp / "serve.log") as (url, server):
        photo = encoded(colour_photo(1))
        status, body = http(f"{url}/invocations", {"dataframe_records": [{"path": "tuber.png"}]})
        assert status == 200, body
        # The answer names each rule and which fired, after the one-rule model's fields.
        answer = body["predictions"][0]
        assert list(answer) == ["label", "z0", "threshold", "z2", "score", "fired", "rules"]
        assert [(r["component"], r["direction"], r["threshold"]) for r in answer["rules"]] == [
            (0, "bad_if_above", 0.0),
            (2, "bad_if_below", 0.0),
        ]
        assert answer["fired"] == [r["component"] for r in answer["rules"] if r["fired"]]
        assert answer["label"] == ("bad" if answer["fired"] else "good")
        assert (answer["score"] > 0) == bool(answer["fired"])
        assert [r["value"] for r in answer["rules"]] == pytest.approx([answer["z0"], answer["z2"]])
        status, again = http(f"{url}/invocations", {"dataframe_records": [{"image_base64": photo}]})
        assert status == 200 and again == body
        # An array is no table of photos: the signature refuses it, cleanly, before the model sees it.
        status, answer = http(f"{url}/invocations", {"inputs": [np.asarray(colour_photo(1)).tolist()]})
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", answer
        assert set(answer) <= {"error_code", "message", "sqlstate", "error_class"}, answer
        assert_clean(json.dumps(answer), str(tmp))
        before = peak_rss(server.pid)

        refused = "row 0: path refused: it must name an existing image file inside the server's input folder"
        hostile = [
            ({"image_base64": bombs["big"]}, "row 0: image too large: 10000×10000"),
            ({"image_base64": bombs["huge"]}, "row 0: image too large: over"),
            ({"image_base64": encoded(camera("L"))}, "row 0: colour mode L is refused"),
            ({"image_base64": encoded(camera("I;16"))}, "row 0: colour mode I;16 is refused"),
            ({"path": "/etc/passwd"}, refused),
            ({"path": "/etc/does-not-exist"}, refused),
            ({"path": "../outside/secret.png"}, refused),
            ({"path": "sub/escape.png"}, refused),
            ({"path": None}, refused),
            ({"image_base64": None}, "row 0: image_base64 must be a string"),
            ({"path": "tuber.png", "image_base64": photo}, "the request has both a 'path' and an 'image_base64'"),
        ]
        requests = [({"dataframe_records": [record]}, start) for record, start in hostile]
        requests += [
            ({"dataframe_records": [{"image_base64": photo}] * 65}, "too many images: 65 in one request"),
            ({"dataframe_records": [{"image_base64": "A" * 1_000_004}]}, "request too large: 1000004 characters"),
        ]
        for payload, start in requests:
            status, body = http(f"{url}/invocations", payload)
            assert status == 400, (start, body)
            assert isinstance(body, dict) and body["error_code"] == "INVALID_PARAMETER_VALUE", body
            assert set(body) <= {"error_code", "message", "sqlstate", "error_class"}, body
            assert body["message"].startswith(start), body
            assert_clean(json.dumps(body), str(tmp), "secret", "passwd", "does-not-exist")
        after = peak_rss(server.pid)
        assert server.poll() is None
        status, body = http(f"{url}/invocations", {"dataframe_records": [{"image_base64": photo}]})
        assert status == 200 and body == again
    assert 0 < after < PEAK_RSS_LIMIT, f"peak RSS {after / 1e9:.2f} GB"
    assert after - before < 150e6, f"peak RSS {before / 1e9:.2f} → {after / 1e9:.2f} GB over the hostile requests"
