"""`latent-replay stream` end to end: a real video file through real OpenCV, headless, scheduled.

The video shows three objects that differ by shape and colour (a red disc, a black square, a white
triangle) on a plain grey background, each moving a little, with sensor noise, in 192x160 frames
(center-cropped to 160x160, resized to 128x128 by the source). Weights are random: features are
weak, but such objects taught and tested under the same conditions are learnable.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np
import pytest

from latent_replay.cli import main
from latent_replay.apps.stream import teacher as teacher_module
from latent_replay.runtime.learn import LearnerHooks
from latent_replay.apps.stream.teacher import Teacher

W, H = 192, 160
TEACH, HELD, FINAL = 40, 8, 24  # per object: taught frames, held-out frames right after, held-out at the end
SETTLE = 4  # frames after an object change left out of the truth (the prediction is smoothed)
OBJECTS = ("disc", "square", "triangle")


def draw(obj: int, k: int, seed: int) -> np.ndarray:
    """Frame k of object `obj`: a big shape moving slowly on grey, plus noise."""
    rng = np.random.default_rng([seed, obj, k])
    img = np.full((H, W, 3), 128, np.uint8)
    cx = int(W / 2 + 12 * np.sin(0.3 * k + obj) + rng.integers(-3, 4))
    cy = int(H / 2 + 10 * np.cos(0.2 * k + obj) + rng.integers(-3, 4))
    s = int(45 * rng.uniform(0.9, 1.1))
    if obj == 0:
        cv2.circle(img, (cx, cy), s, (0, 0, 230), -1, cv2.LINE_AA)
    elif obj == 1:
        cv2.rectangle(img, (cx - s, cy - s), (cx + s, cy + s), (20, 20, 20), -1)
    else:
        pts = np.array([[cx, cy - s], [cx - s, cy + s], [cx + s, cy + s]], np.int32)
        cv2.fillPoly(img, [pts], (255, 255, 255), cv2.LINE_AA)
    noise = rng.integers(-3, 4, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_video(path: Path, blocks: Sequence[Tuple[int, int]], seed: int) -> None:
    """Blocks of (object, frames) one after another, as an mp4v file."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15, (W, H))
    assert writer.isOpened()
    for obj, n in blocks:
        for k in range(n):
            writer.write(draw(obj, k, seed))
    writer.release()


def seg(first: int, last: int, obj: int) -> Dict[str, object]:
    return {"frames": [first, last], "label": OBJECTS[obj]}


def read_log(path: Path) -> Tuple[List[dict], List[dict], dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    frames = [r for r in lines if r["type"] == "frame"]
    trainings = [r for r in lines if r["type"] == "training"]
    summaries = [r for r in lines if r["type"] == "summary"]
    assert len(summaries) == 1
    return frames, trainings, summaries[0]


def accuracy(frames: List[dict], first: int) -> float:
    scored = [f for f in frames if f["frame"] >= first and f["truth"] is not None]
    assert scored
    return float(np.mean([f["label"] == f["truth"] for f in scored]))


GATE_FRAMES = 3  # frames the live loop must predict while a training is held mid-batch
GATE_LIMIT_S = 60  # only bounds how long a blocked loop takes to fail the test


class GatedTeacher(Teacher):
    """The stream's teacher, holding each training at its first train step until the live loop has
    predicted GATE_FRAMES more frames: a training is then certainly in progress while those frames
    are predicted, however fast the machine. A loop that waited for the training would never get
    there (the gate gives up after GATE_LIMIT_S and records it)."""

    gates: List[Dict[str, Any]] = []

    def _train(self, job):
        gate: Dict[str, Any] = {"submitted_frame": job.submitted_frame}
        teacher = self

        class Gate(LearnerHooks):
            def before_step(self, learner):
                if "entered_frame" not in gate:
                    gate["entered_frame"] = teacher._frame_now()
                    deadline = time.monotonic() + GATE_LIMIT_S
                    while teacher._frame_now() < gate["entered_frame"] + GATE_FRAMES and time.monotonic() < deadline:
                        time.sleep(0.001)
                    gate["released_frame"] = teacher._frame_now()

        hook = Gate()
        self.learner.hooks.append(hook)
        try:
            super()._train(job)
        finally:
            self.learner.hooks.remove(hook)
            GatedTeacher.gates.append(gate)


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """Teach the three objects in turn from a video, then predict held-out frames of each."""
    tmp = tmp_path_factory.mktemp("stream")
    video, schedule, log, state = tmp / "teach.mp4", tmp / "schedule.json", tmp / "log.jsonl", tmp / "state"
    block = TEACH + HELD
    write_video(video, [(o, block) for o in range(3)] + [(o, FINAL) for o in range(3)], seed=0)
    final = 3 * block
    plan = {
        "teach": [seg(o * block, o * block + TEACH - 1, o) for o in range(3)],
        "truth": [seg(o * block + TEACH + SETTLE, (o + 1) * block - 1, o) for o in range(3)]
                 + [seg(final + o * FINAL + SETTLE, final + (o + 1) * FINAL - 1, o) for o in range(3)],
    }
    schedule.write_text(json.dumps(plan))
    GatedTeacher.gates = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(teacher_module, "Teacher", GatedTeacher)  # stream_command imports it at call time
        code = main(["stream", "--source", str(video), "--headless", "--schedule", str(schedule), "--state",
                     str(state), "--weights", "random", "--log", str(log)])
    assert code == 0
    return {"tmp": tmp, "state": state, "log": log, "final": final, "frames": final + 3 * FINAL,
            "gates": list(GatedTeacher.gates)}


def test_held_out_frames_are_recognised_after_teaching(taught):
    frames, trainings, summary = read_log(taught["log"])
    assert [t["label"] for t in trainings] == list(OBJECTS)
    assert summary["known_classes"] == list(OBJECTS)
    assert summary["frames"] == taught["frames"]
    final_acc = accuracy(frames, taught["final"])  # all three objects known: chance is 1/3
    assert final_acc >= 0.7, final_acc
    assert summary["accuracy"] >= 0.7


def test_inference_keeps_running_while_training(taught):
    """Every frame index has a prediction; while a training was held at its first step, the live loop
    went on predicting GATE_FRAMES frames with the previous weights; between a batch's hand-over to
    the worker and the swap of its weights every frame was predicted with the previous weights, and
    the frame after the swap with the new ones. Ordering of logged events, not wall time:
    `python benchmarks/stream_idle_time.py` prints how long training delays the loop."""
    frames, trainings, _ = read_log(taught["log"])
    assert [f["frame"] for f in frames] == list(range(taught["frames"]))
    gates = taught["gates"]
    assert len(gates) == len(trainings) == 3
    for t, gate in zip(trainings, gates):
        assert gate["submitted_frame"] == t["submitted_frame"]
        assert "entered_frame" in gate, f"the training of '{t['label']}' never reached a train step"
        entered, released = gate["entered_frame"], gate["released_frame"]
        assert released >= entered + GATE_FRAMES, f"the live loop stalled while '{t['label']}' trained: {gate}"
        submitted, swapped = t["submitted_frame"], t["end_frame"]
        assert submitted <= entered and released <= swapped
        during = frames[submitted + 1:swapped]
        assert len(during) >= GATE_FRAMES
        assert all(f["training"] and f["weights"] == t["batch"] for f in during)
        assert frames[swapped]["weights"] == t["batch"] + 1
        assert t["frames"] == TEACH and t["duration_s"] > 0


def test_restart_from_saved_state_still_recognises(taught, tmp_path):
    video, schedule, log = tmp_path / "held.mp4", tmp_path / "schedule.json", tmp_path / "log.jsonl"
    write_video(video, [(o, FINAL) for o in range(3)], seed=1)
    schedule.write_text(json.dumps({"truth": [seg(o * FINAL + SETTLE, (o + 1) * FINAL - 1, o) for o in range(3)]}))
    assert main(["stream", "--source", str(video), "--headless", "--schedule", str(schedule),
                 "--state", str(taught["state"]), "--log", str(log)]) == 0
    frames, trainings, summary = read_log(log)
    assert trainings == [] and summary["known_classes"] == list(OBJECTS)
    assert accuracy(frames, 0) >= 0.7


def _fails_with(capsys, argv: List[str], *words: str) -> None:
    assert main(["stream", "--headless"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("latent-replay stream: error:"), err
    for w in words:
        assert w in err[-1], err[-1]


def test_missing_camera_index(tmp_path, capsys):
    _fails_with(capsys, ["--source", "9", "--state", str(tmp_path / "s"), "--weights", "random"],
                "camera index 9")
    assert not (tmp_path / "s" / "artifacts").exists()  # failed before exporting anything


def test_unreadable_video_file(tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    _fails_with(capsys, ["--source", str(bad), "--state", str(tmp_path / "s")], "cannot read video file", str(bad))
    _fails_with(capsys, ["--source", str(tmp_path / "nope.mp4"), "--state", str(tmp_path / "s")], "no such file")


@pytest.mark.parametrize("content, words", [
    ("{not json", ("not valid JSON",)),
    ('{"teach": [{"frames": [10, 5], "label": "mug"}]}', ("teach[0]", "first <= last")),
    ('{"teach": [{"frames": [0, 9], "label": ""}]}', ("teach[0]", "label")),
    ('{"teach": [{"frames": [0, 9], "label": "a"}, {"frames": [5, 20], "label": "b"}]}', ("overlap",)),
    ('{"teech": []}', ("unknown key", "teech")),
    ('[1, 2]', ("JSON object",)),
])
def test_malformed_schedule(tmp_path, capsys, content, words):
    schedule = tmp_path / "schedule.json"
    schedule.write_text(content)
    _fails_with(capsys, ["--source", "synthetic", "--schedule", str(schedule), "--state", str(tmp_path / "s")],
                "schedule", *words)


def test_synthetic_source_record_and_screenshot(tmp_path):
    """The synthetic source and the overlay: a video (--record) and a PNG (as docs/stream_demo.png)."""
    shot, video = tmp_path / "shot.png", tmp_path / "overlay.mp4"
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"teach": [{"frames": [0, 19], "label": "first object"}]}))
    assert main(["stream", "--source", "synthetic", "--headless", "--schedule", str(schedule), "--state",
                 str(tmp_path / "s"), "--weights", "random", "--max-frames", "30", "--screenshot", str(shot), "--record", str(video)]) == 0
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] == 384
    recorded = cv2.VideoCapture(str(video))
    assert recorded.isOpened() and int(recorded.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    ok, first = recorded.read()
    recorded.release()
    assert ok and first.shape == image.shape


class _DyingCamera:
    """A live camera (hardware we lack) that delivers `n` frames, then nothing; reopening fails."""

    is_live = True

    def __init__(self, n: int) -> None:
        self.n, self.k = n, 0

    def read(self):
        self.k += 1
        return cv2.resize(draw(self.k // 10 % 3, self.k, 0), (128, 128)) if self.k <= self.n else None

    def close(self) -> None:
        pass


def test_camera_that_stops_is_retried_then_stops_with_state_saved(tmp_path, monkeypatch, capsys):
    import latent_replay.apps.stream.live as stream
    from latent_replay.runtime.sources.base import SourceError

    opened = []

    def fake_open(spec, size, seed=0):
        opened.append(spec)
        if len(opened) > 1:
            raise SourceError("camera index 0 does not exist")
        return _DyingCamera(25)

    monkeypatch.setattr(stream, "open_source", fake_open)
    state = tmp_path / "s"
    assert main(["stream", "--source", "0", "--headless", "--state", str(state), "--weights", "random",
                 "--teach-frames", "10", "--reconnect-seconds", "1.2"]) == 0
    err = capsys.readouterr().err
    assert "stopped delivering frames; retrying for 1.2 s" in err and "stopping" in err
    assert len(opened) >= 2  # retried
    assert (state / "learner" / "state.json").is_file()  # saved on the way out


def test_without_a_display_it_asks_for_headless_before_exporting(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    state = tmp_path / "state"
    assert main(["stream", "--source", "synthetic", "--state", str(state), "--weights", "random"]) == 2
    assert "--headless" in capsys.readouterr().err
    assert not state.exists()
