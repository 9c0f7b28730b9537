"""What the commands write and say when the output goes somewhere unusual or a run ends early: a reader
that goes away, output places that cannot be written (refused before anything runs), a run stopped
by --max-batches or Ctrl-C, and which learner state predict and export-model chose."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from latent_replay.cli import main
from safety_helpers import CWR, copy_run, in_read_only_folder, only_line, template_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return template_run(tmp_path_factory)


# -- output into a closed pipe -------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["layers"], ["layers", "--json"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(argv):
    """`latent-replay layers | head`: no BrokenPipeError traceback (or 'Exception ignored') when the reader
    has closed the pipe before the command writes."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "latent_replay.cli"] + argv, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the interpreter has even started: every write finds the pipe closed
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 1 and err == "", err


# -- outputs that cannot be written are refused before anything runs -------------------------------------------
def test_unwritable_outputs_are_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    from latent_replay.apps.bench import command as bench

    def must_not_run(*a, **k):
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(bench, "benchmark", must_not_run)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    state = tmp_path / "state"
    stream = ["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--weights", "random",
              "--state", str(state)]
    cases = [(["bench", "--quick", "--out", str(notes / "b")], "bench",
              f"--out {notes / 'b'}: {notes} is not a folder"),
             (["bench", "--quick", "--json", str(tmp_path)], "bench", f"--json {tmp_path} is a folder"),
             (stream + ["--log", str(tmp_path)], "stream", f"--log {tmp_path} is a folder"),
             (stream + ["--record", str(notes / "demo.mp4")], "stream", f"{notes} is not a folder"),
             (stream + ["--screenshot", str(notes / "x" / "shot.png")], "stream", f"{notes} is not a folder")]
    for argv, command, words in cases:
        assert main(argv) == 2, argv
        assert words in only_line(capsys.readouterr().err, command), argv
        assert not state.exists() and notes.read_text() == "mine\n"


@pytest.mark.parametrize("case", ["bench", "stream --log", "stream --record"])
def test_read_only_outputs_are_refused_before_anything_runs(tmp_path, case):
    """In a fresh process with a really read-only folder: bench does not run its minutes of measurements
    first, stream does not export into --state first."""
    ro, state = tmp_path / "ro", tmp_path / "state"
    argv = {"bench": ["bench", "--quick", "--out", str(ro / "b")],
            "stream --log": ["stream", "--log", str(ro / "log.jsonl")],
            "stream --record": ["stream", "--record", str(ro / "demo.mp4")]}[case]
    if argv[0] == "stream":
        argv += ["--source", "synthetic", "--headless", "--max-frames", "3", "--weights", "random",
                 "--state", str(state)]
    proc = in_read_only_folder(ro, argv)
    assert proc.returncode == 2, proc.stderr
    line = only_line(proc.stderr, argv[0])
    assert f"cannot write in {ro} (read-only or no permission)" in line, line
    assert not state.exists()


# -- where a run stands: --max-batches, Ctrl-C ------------------------------------------------------
def test_a_run_stopped_by_max_batches_says_where_it_stopped(template, tmp_path, capsys, monkeypatch):
    from latent_replay.apps.run import results

    titles, plot = [], results.plot_accuracy

    def plot_and_keep_title(path, runs, title, reference=None):
        titles.append(title)
        plot(path, runs, title, reference)

    monkeypatch.setattr(results, "plot_accuracy", plot_and_keep_title)
    out = tmp_path / "out"
    args = CWR + ["--artifacts", str(template / "artifacts"), "--out", str(out)]
    assert main(args + ["--max-batches", "2"]) == 0
    printed = capsys.readouterr().out
    assert "stopped at batch 2 of 4 (--max-batches): the same command continues" in printed
    assert "accuracy after 2 batches over 1 run(s)" in printed and "final accuracy" not in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["stopped"] == "stopped at batch 2 of 4" and not saved["complete"]
    assert titles[-1].endswith("(stopped at batch 2 of 4)")
    assert main(args) == 0  # the rest: nothing stopped any more
    printed = capsys.readouterr().out
    assert "stopped at" not in printed and "final accuracy over 1 run(s)" in printed
    assert json.loads((out / "results.json").read_text())["stopped"] is None and "stopped" not in titles[-1]


def test_ctrl_c_closes_the_progress_bar_before_saying_what_was_saved(template, tmp_path, capsys, monkeypatch):
    """The message starts on a line of its own and the bar is not drawn again after it."""
    import gc

    from latent_replay.runtime import state as state_module

    real_save, saves = state_module.save_state, []

    def ctrl_c_at_second_save(state, directory):
        saves.append(directory)
        if len(saves) == 2:
            raise KeyboardInterrupt
        real_save(state, directory)

    monkeypatch.setattr(state_module, "save_state", ctrl_c_at_second_save)
    out = tmp_path / "out"
    args = [a for a in CWR if a != "--quiet"] + ["--artifacts", str(template / "artifacts"), "--out", str(out)]
    assert main(args) == 130
    gc.collect()  # a bar left open is drawn again when it is collected
    err = capsys.readouterr().err
    message = f"latent-replay run: interrupted: saved run 0 up to batch 1 of 4 in {out}"
    assert message in err and "run 0:" in err, err  # the bar was shown
    before, after = err.split(message)
    assert before.endswith("\n"), repr(before[-80:])
    assert after == "; the same command continues from there\n", repr(after)


# -- export-model --state --------------------------------------------------------------------------
def test_export_model_takes_a_stream_state_folder(tmp_path, capsys, template):
    state = tmp_path / "stream-state"
    assert main(["stream", "--source", "synthetic", "--headless", "--max-frames", "3", "--weights", "random",
                 "--classes", "5", "--state", str(state)]) == 0
    model = tmp_path / "learned.onnx"
    assert main(["export-model", "--artifacts", str(state / "artifacts"), "--state", str(state),
                 "--out", str(model)]) == 0
    assert model.is_file()
    assert f"state: {state / 'learner'} (the stream state {state})" in capsys.readouterr().err
    assert main(["export-model", "--state", str(tmp_path / "nothing"), "--out", str(model)]) == 2
    line = only_line(capsys.readouterr().err, "export-model")
    assert "does not exist" in line and "the run folder OUT" in line


def test_export_model_and_predict_take_a_run_folder_and_say_which_state(template, tmp_path, capsys):
    """Both choose with the same function: a run folder's lowest run, said on stderr, as is a state given
    directly; the model written from the folder is the one written from its run's state."""
    run = copy_run(template, tmp_path / "run")
    by_state, by_folder = tmp_path / "by-state.onnx", tmp_path / "by-folder.onnx"
    state = run / "run0" / "state"
    capsys.readouterr()
    assert main(["export-model", "--state", str(state), "--out", str(by_state)]) == 0
    assert f"state: {state}\n" in capsys.readouterr().err
    for command in (["export-model", "--out", str(by_folder)], ["predict"]):
        assert main(command + ["--state", str(run)]) == 0
        assert f"state: {state} (run 0, the only run in {run})" in capsys.readouterr().err
    assert by_folder.read_bytes() == by_state.read_bytes()
    copy_run(state, run / "run2" / "state")
    copy_run(state, run / "run10" / "state")
    for command in (["export-model", "--out", str(by_folder)], ["predict"]):
        assert main(command + ["--state", str(run)]) == 0
        assert (f"state: {state} (run 0 of runs 0, 2, 10 in {run}; --state {run / 'runN' / 'state'} for another)"
                in capsys.readouterr().err)
