"""Model registry, ``models pull`` and the one home: a loopback HTTP server serves what the tests made.

Downloads: verified, cached, atomic; a wrong checksum, a connection cut half-way or an archive with
``../`` members leaves nothing in the home. Setup chains: ``data download`` writes where every
lookup looks next, without flags.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from arcface.cli import main
from arcface.data import DataError
from arcface.data import download as download_module
from arcface.data.download import check_archive
from arcface.home import find_detector, find_lfw
from arcface.pretrained import registry
from arcface.pretrained import ModelEntry, list_models, resolve_model

onnx = pytest.importorskip("onnx", reason="building test ONNX models needs the onnx package (pip install -e '.[test]')")
pytest.importorskip("onnxruntime", reason="ONNX models need onnxruntime (pip install -e '.[test]')")
from test_eval_cli import SIZE, linear_onnx  # noqa: E402


@pytest.fixture
def server():
    """Files served on 127.0.0.1; names in ``cut`` announce their full length but send only half."""
    files: dict[str, bytes] = {}
    cut: set[str] = set()
    requests: collections.Counter = collections.Counter()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 -- the http.server hook
            name = self.path.lstrip("/")
            requests[name] += 1
            if name not in files:
                self.send_error(404)
                return
            data = files[name]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if name in cut else data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", files=files, cut=cut, requests=requests)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    monkeypatch.setenv("ARCFACE_HOME", str(path))
    for name in ("ARCFACE_DETECTOR", "ARCFACE_LFW", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return path


def files_under(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture(scope="module")
def weight():
    return np.random.default_rng(3).standard_normal((3 * SIZE * SIZE, 8)) / 100


@pytest.fixture
def model_bytes(tmp_path, weight):
    return linear_onnx(tmp_path / "tiny.onnx", weight, [3, SIZE, SIZE]).read_bytes()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def serve_entries(monkeypatch, server, *entries):
    monkeypatch.setattr(registry, "BUILTIN", tuple(entries))


def entry(name, url, **fields):
    return ModelEntry(name=name, task="recognition", description="test", licence="test", url=url, **fields)


def test_pull_downloads_verifies_caches_and_a_second_pull_downloads_nothing(home, server, model_bytes, monkeypatch, capsys):
    server.files["tiny.onnx"] = model_bytes
    digest = hashlib.sha256(model_bytes).hexdigest()
    serve_entries(monkeypatch, server, entry("tiny", f"{server.url}/tiny.onnx", sha256=digest))
    assert main(["models", "pull", "tiny", "-q"]) == 0
    assert files_under(home) == ["models/tiny/manifest.json", "models/tiny/tiny.onnx"]
    assert (home / "models" / "tiny" / "tiny.onnx").read_bytes() == model_bytes
    manifest = json.loads((home / "models" / "tiny" / "manifest.json").read_text())
    assert manifest["file_sha256"] == manifest["download_sha256"] == digest and manifest["pinned"] is True
    assert main(["models", "pull", "tiny"]) == 0
    assert server.requests["tiny.onnx"] == 1  # the second pull found it in the home
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    states = {row["name"]: row["state"] for row in json.loads(capsys.readouterr().out)["models"]}
    assert states == {"tiny": "pulled"}
    # Every load checks the file against the manifest: a changed file is refused.
    with (home / "models" / "tiny" / "tiny.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DataError, match="differs from the one recorded"):
        resolve_model("tiny")


def test_an_archive_entry_is_unpacked_its_checksum_recorded_and_its_convention_applied(home, server, model_bytes, monkeypatch, tmp_path):
    from arcface import FaceRecognizer
    from arcface.eval import load_face_model

    archive = zip_bytes({"pack/tiny.onnx": model_bytes, "pack/other.onnx": b"not used"})
    server.files["pack.zip"] = archive
    serve_entries(monkeypatch, server, entry("pack", f"{server.url}/pack.zip", member="tiny.onnx", input_std=128.0, channel_order="BGR",
                                             threshold=0.42))
    recognizer = FaceRecognizer.from_pretrained("pack", detector=None)  # downloads: nothing was pulled before
    manifest = json.loads((home / "models" / "pack" / "manifest.json").read_text())
    assert manifest["pinned"] is False and manifest["download_sha256"] == hashlib.sha256(archive).hexdigest()
    assert manifest["file"] == "pack/tiny.onnx" and manifest["file_sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert recognizer.threshold == 0.42 and recognizer.info.input_std == 128.0 and recognizer.info.bgr
    face = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    ours = recognizer.embed([face]).embeddings[0]
    # The same model loaded with the convention spelled out, and with the default one.
    for convention, expected_equal in (({"input_std": 128.0, "bgr": True}, True), ({}, False)):
        model, info = load_face_model(home / "models" / "pack" / "pack" / "tiny.onnx", **convention)
        x = info.spec.normalize(torch.from_numpy(face).permute(2, 0, 1))[None]
        with torch.no_grad():
            reference = (model(x) + model(x.flip(3)))[0].double()
        reference = (reference / reference.norm()).numpy()
        assert np.allclose(ours, reference, atol=1e-5) == expected_equal
    assert server.requests["pack.zip"] == 1


@pytest.mark.parametrize("failure", ["checksum", "cut", "traversal", "absolute"])
def test_a_bad_download_is_a_clear_error_and_leaves_nothing_in_the_home(home, server, model_bytes, monkeypatch, tmp_path, caplog, failure):
    name = "model.zip" if failure in ("traversal", "absolute") else "model.onnx"
    server.files[name] = {
        "checksum": model_bytes, "cut": model_bytes,
        "traversal": zip_bytes({"ok/tiny.onnx": model_bytes, "../escaped.txt": b"outside"}),
        "absolute": zip_bytes({"tiny.onnx": model_bytes, "/escaped.txt": b"outside"}),
    }[failure]
    if failure == "cut":
        server.cut.add(name)
    pinned = "0" * 64 if failure == "checksum" else None
    serve_entries(monkeypatch, server, entry("broken", f"{server.url}/{name}", sha256=pinned, member="tiny.onnx"))
    assert main(["models", "pull", "broken"]) == 2
    message = {"checksum": "checksum mismatch", "cut": "cut off after", "traversal": "refused", "absolute": "refused"}[failure]
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]
    assert files_under(home) == []
    assert not (home.parent / "escaped.txt").exists()
    with pytest.raises(DataError, match="not in the model home"):  # not taken as complete by a later load
        resolve_model("broken")
    if failure == "cut":  # the same pull succeeds once the connection holds
        server.cut.clear()
        assert main(["models", "pull", "broken"]) == 0
        assert (home / "models" / "broken" / "model.onnx").read_bytes() == model_bytes


def test_tar_archives_with_links_or_absolute_names_out_of_the_folder_are_refused(tmp_path):
    for name, kind in (("/etc/evil", tarfile.REGTYPE), ("a/../../evil", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
        path = tmp_path / "bad.tar"
        with tarfile.open(path, "w") as archive:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "../../outside"
            archive.addfile(info, io.BytesIO(b""))
        with pytest.raises(DataError, match="refused"):
            check_archive(path)
    with tarfile.open(tmp_path / "good.tar", "w") as archive:
        archive.addfile(tarfile.TarInfo("folder/file.txt"), io.BytesIO(b""))
    assert check_archive(tmp_path / "good.tar") == "tar"


def test_data_download_then_every_lookup_finds_it_without_flags(home, server, monkeypatch, tmp_path, caplog):
    monkeypatch.chdir(tmp_path)  # away from the repository's own ../shared layout
    with pytest.raises(DataError) as missing:
        find_lfw(None)
    assert "$ARCFACE_HOME/lfw" in str(missing.value) and "arcface data download lfw" in str(missing.value)
    assert main(["data", "align", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no face detector found" in caplog.text and "$ARCFACE_HOME/models/yunet" in caplog.text
    # An LFW-shaped tree and a detector-shaped file, served with their checksums.
    for name in download_module.LFW_PROTOCOL_FILES:
        server.files[name] = f"{name}\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = b"\xff\xd8\xff fake jpeg"
        info = tarfile.TarInfo("lfw-deepfunneled/Ann/Ann_0001.jpg")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    server.files["lfw-deepfunneled.tgz"] = buffer.getvalue()
    server.files["face_detection_yunet_2023mar.onnx"] = b"yunet-shaped bytes"
    monkeypatch.setattr(download_module, "LFW_BASE_URL", server.url)
    monkeypatch.setattr(download_module, "LFW_MD5", {name: hashlib.md5(data).hexdigest() for name, data in server.files.items()})
    yunet = next(e for e in registry.BUILTIN if e.name == "yunet")
    monkeypatch.setattr(registry, "BUILTIN", (replace(yunet, url=f"{server.url}/face_detection_yunet_2023mar.onnx",
                                                      sha256=hashlib.sha256(b"yunet-shaped bytes").hexdigest()),))
    assert main(["data", "download", "lfw", "-q"]) == 0
    assert main(["data", "download", "yunet", "-q"]) == 0
    lfw = find_lfw(None)
    assert lfw == home / "lfw" and (lfw / "images" / "Ann" / "Ann_0001.jpg").exists()
    detector = find_detector(None)
    assert detector == str(home / "models" / "yunet" / "face_detection_yunet_2023mar.onnx")
    from arcface.recipes.lfw import find_detector as recipe_detector, find_lfw as recipe_lfw

    assert recipe_lfw(None) == lfw and recipe_detector(None, lfw) == detector
    assert main(["models", "pull", "yunet"]) == 0 and server.requests["face_detection_yunet_2023mar.onnx"] == 1
    # A wrong pinned checksum for LFW: a clear error, and the protocol file is not written.
    monkeypatch.setattr(download_module, "LFW_MD5", {"pairs.txt": "0" * 32})
    caplog.clear()
    assert main(["data", "download", "lfw", "--out", str(tmp_path / "lfw2")]) == 2
    assert "checksum mismatch" in caplog.text and files_under(tmp_path / "lfw2") == []


def test_the_registry_lists_published_models_with_licence_source_and_convention(capsys):
    names = [e.name for e in registry.BUILTIN]
    assert {"yunet", "buffalo_l", "antelopev2"} <= set(names)
    buffalo = next(e for e in registry.BUILTIN if e.name == "buffalo_l")
    # insightface's ArcFaceONNX: (x - 127.5) / 127.5 with swapRB from OpenCV's BGR, i.e. RGB.
    assert (buffalo.input_mean, buffalo.input_std, buffalo.channel_order, buffalo.member) == (127.5, 127.5, "RGB", "w600k_r50.onnx")
    for e in registry.BUILTIN:
        assert e.licence and e.source.startswith("https://") and e.url.startswith("https://") and e.accuracy
        e.validate()
        if e.task == "recognition":
            assert "non-commercial" in e.licence
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 1 + 3 and any(line.startswith("buffalo_l ") for line in lines)


def test_a_local_model_is_registered_with_its_convention(home, tmp_path, weight, capsys):
    path = linear_onnx(tmp_path / "mine.onnx", weight, [3, SIZE, SIZE])
    assert main(["models", "add", "mine", str(path), "--input-std", "128", "--threshold", "0.25"]) == 0
    stored = next(e for e in list_models() if e.name == "mine")
    assert (stored.kind, stored.input_std, stored.embedding_size, stored.threshold) == ("local", 128.0, 8, 0.25)
    assert main(["models", "add", "mine", str(path)]) == 2  # taken
    assert main(["models", "add", "buffalo_l", str(path)]) == 2  # a built-in name
    # The path given directly gets the registered convention too.
    assert resolve_model(str(path)).entry.name == "mine"
    assert main(["models", "remove", "mine"]) == 0 and resolve_model(str(path)).entry is None
