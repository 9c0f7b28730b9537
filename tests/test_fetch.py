"""Weight download: local HTTP server with/without Range, resume, corrupt files, 404, CLI exit codes."""
from __future__ import annotations

import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import make_weights
from latent_replay.models import fetch
from latent_replay.models.caffe import encode_caffemodel, weights_to_caffe_layers
from latent_replay.cli import main
from latent_replay.models.fetch import fetch_weights
from latent_replay.models.load import WeightsError, load_weights


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    support_range = True
    cut_after = None  # bytes to send before dropping the connection (simulates a broken download)
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        range_header = self.headers.get("Range")
        type(self).requests.append((self.path, range_header))
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        if range_header and self.support_range:
            start = int(range_header.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            body = body[: self.cut_after]
        self.wfile.write(body)


@pytest.fixture(scope="module")
def model_bytes():
    return encode_caffemodel(weights_to_caffe_layers(make_weights(seed=11, classes=50)))


@pytest.fixture()
def server(model_bytes):
    _Handler.files = {"/MobileNetV1.caffemodel": model_bytes,
                      "/bad.caffemodel": np.random.default_rng(0).bytes(len(model_bytes) // 100)}
    _Handler.support_range, _Handler.cut_after, _Handler.requests = True, None, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _fetch(url_base, tmp_path, path="/MobileNetV1.caffemodel", **kw):
    return fetch_weights("caffe", cache_dir=tmp_path, url=url_base + path, progress=False, **kw)


def _leftovers(tmp_path):
    return sorted(p.name for p in Path(tmp_path).iterdir())


def test_fetch_known_name_with_url_override(server, tmp_path, model_bytes):
    path = _fetch(server, tmp_path)
    assert path == tmp_path / "MobileNetV1.caffemodel"
    assert path.read_bytes() == model_bytes
    assert _leftovers(tmp_path) == ["MobileNetV1.caffemodel"]
    assert load_weights(str(path)).head_weight.shape == (50, 1024)
    _Handler.requests.clear()
    assert _fetch(server, tmp_path) == path and _Handler.requests == []  # cached: no download
    _fetch(server, tmp_path, force=True)
    assert len(_Handler.requests) == 1


def test_resume_from_truncated_part(server, tmp_path, model_bytes):
    half = len(model_bytes) // 2
    (tmp_path / "MobileNetV1.caffemodel.part").write_bytes(model_bytes[:half])
    path = _fetch(server, tmp_path)
    assert _Handler.requests == [("/MobileNetV1.caffemodel", f"bytes={half}-")]
    assert path.read_bytes() == model_bytes
    assert _leftovers(tmp_path) == ["MobileNetV1.caffemodel"]


def test_server_without_range_restarts_cleanly(server, tmp_path, model_bytes):
    _Handler.support_range = False
    (tmp_path / "MobileNetV1.caffemodel.part").write_bytes(b"garbage that must not be kept" * 100)
    path = _fetch(server, tmp_path)
    assert _Handler.requests[0][1] is not None  # we asked for a range, the server sent everything
    assert path.read_bytes() == model_bytes


def test_broken_download_leaves_part_and_then_resumes(server, tmp_path, model_bytes):
    _Handler.cut_after = 100_000
    with pytest.raises(WeightsError, match="resume"):
        _fetch(server, tmp_path)
    assert _leftovers(tmp_path) == ["MobileNetV1.caffemodel.part"]  # no final file
    assert (tmp_path / "MobileNetV1.caffemodel.part").stat().st_size == 100_000
    _Handler.cut_after = None
    path = _fetch(server, tmp_path)
    assert _Handler.requests[-1][1] == "bytes=100000-"
    assert path.read_bytes() == model_bytes


def test_corrupt_download_is_deleted(server, tmp_path):
    with pytest.raises(WeightsError, match="not usable weights") as info:
        _fetch(server, tmp_path, path="/bad.caffemodel")
    assert "bad.caffemodel" in str(info.value)
    assert _leftovers(tmp_path) == []


def test_404_is_an_error_and_leaves_nothing(server, tmp_path):
    with pytest.raises(WeightsError, match="404"):
        _fetch(server, tmp_path, path="/nope.caffemodel")
    assert _leftovers(tmp_path) == []


def test_plain_url_and_unknown_name(server, tmp_path, model_bytes):
    path = fetch_weights(server + "/MobileNetV1.caffemodel", cache_dir=tmp_path / "c", progress=False)
    assert path.name == "MobileNetV1.caffemodel" and path.read_bytes() == model_bytes
    with pytest.raises(WeightsError, match="unknown weights"):
        fetch_weights("resnet", cache_dir=tmp_path, progress=False)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENT_REPLAY_CACHE", str(tmp_path / "env"))
    assert fetch.default_cache_dir() == tmp_path / "env"
    assert fetch.cached_path("timm").name.endswith(".safetensors")
    monkeypatch.delenv("LATENT_REPLAY_CACHE")
    assert fetch.default_cache_dir() == Path.home() / ".cache" / "latent-replay"


def test_known_name_resolves_through_cache(monkeypatch, server, tmp_path):
    monkeypatch.setenv("LATENT_REPLAY_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="fetch weights caffe"):
        load_weights("caffe")
    _fetch(server, tmp_path)
    assert load_weights("caffe").source == "caffe:MobileNetV1.caffemodel"


def test_fetch_command_exit_codes(server, tmp_path, capsys):
    ok = ["fetch", "weights", "caffe", "--url", server + "/MobileNetV1.caffemodel", "--cache-dir", str(tmp_path),
          "--quiet"]
    assert main(ok) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "MobileNetV1.caffemodel")
    bad = ["fetch", "weights", "--url", server + "/missing.caffemodel", "--cache-dir", str(tmp_path / "x"), "--force",
           "--quiet"]  # the name defaults to caffe
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("latent-replay fetch: error: ") and err.count("\n") == 1 and "404" in err


# -- Keras's published MobileNet family -------------------------------------------------------


def test_keras_names_follow_keras_applications():
    """keras:WIDTH_SIZE[_no_top] -> keras.applications' file names and URL (alpha_text 1_0/7_5/5_0/2_5)."""
    base = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
    assert fetch.known_weights("keras:1.0_128").url == base + "mobilenet_1_0_128_tf.h5"
    assert fetch.known_weights("keras:0.75_224_no_top").url == base + "mobilenet_7_5_224_tf_no_top.h5"
    assert fetch.known_weights("keras:0.5_160").filename == "mobilenet_5_0_160_tf.h5"
    assert fetch.known_weights("keras:0.25_192").width == 0.25
    for bad in ("keras:0.3_128", "keras:1.0_100", "keras:1.0"):
        with pytest.raises(WeightsError, match="keras:WIDTH_SIZE|Keras publishes MobileNet at widths"):
            fetch.known_weights(bad)


@pytest.fixture()
def keras_server(server, tmp_path_factory):
    import keras_files as kf

    folder = tmp_path_factory.mktemp("keras")
    _Handler.files["/mobilenet_5_0_128_tf.h5"] = kf.write_h5(folder / "a.h5", kf.random_arrays(0.5)).read_bytes()
    _Handler.files["/wide.h5"] = kf.write_h5(folder / "b.h5", kf.random_arrays(1.0)).read_bytes()
    return server


def test_fetch_keras_weights_and_use_them(keras_server, tmp_path, monkeypatch, capsys):
    """`fetch weights keras:0.5_128` downloads (resumably, with the progress bar of every download),
    checks that the file is a width-0.5 MobileNet with its top, and `--weights keras:0.5_128` then
    loads it from the cache."""
    from latent_replay.cli import main

    url = keras_server + "/mobilenet_5_0_128_tf.h5"
    assert main(["fetch", "weights", "keras:0.5_128", "--url", url, "--cache-dir", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith("mobilenet_5_0_128_tf.h5")
    monkeypatch.setenv("LATENT_REPLAY_CACHE", str(tmp_path))
    weights = load_weights("keras:0.5_128")
    assert weights.arch.width == 0.5 and weights.head_weight.shape == (1000, 512)


def test_fetched_keras_file_of_another_width_is_deleted(keras_server, tmp_path, capsys):
    from latent_replay.cli import main

    assert main(["fetch", "weights", "keras:0.5_128", "--url", keras_server + "/wide.h5", "--cache-dir",
                 str(tmp_path), "--quiet"]) == 2
    assert "width-1 MobileNet, not 0.5" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []
