"""The README's synthetic-stream table is the one `benchmarks/synthetic_methods.py` prints: its rows come
from the runs' results.json, it carries the commit it was made at, and the script rewrites exactly the
block between the README's markers (so the table is regenerated, not edited by hand)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from safety_helpers import template_run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import synthetic_methods as script  # noqa: E402


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return template_run(tmp_path_factory)


def readme_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = text.index(script.BEGIN) + len(script.BEGIN), text.index(script.END)
    return text[start:end].strip()


def test_the_readme_table_is_the_scripts_output():
    block = readme_block()
    table, _, note = block.partition("\n\n")
    lines = table.splitlines()
    assert "\n".join(lines[:2]) == script.HEADER
    assert [line.split(" | ")[0][2:] for line in lines[2:]] == [label for _, label, _ in script.METHODS]
    for line in lines[2:]:  # every cell in the script's formats
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert re.fullmatch(r"\d+\.\d%", cells[2]) and re.fullmatch(r"\d+\.\d%", cells[3]), line
        assert re.fullmatch(r"\d+\.\d pts", cells[4]) and re.fullmatch(r"[+-]\d+\.\d pts", cells[5]), line
        assert re.fullmatch(r"\d+\.\d+ s", cells[6]), line
    made = re.fullmatch(r"Made by `python benchmarks/synthetic_methods.py --readme README.md` at commit "
                        r"([0-9a-f]{7,}) \(.*\)\.", note.strip())
    assert made, note  # a commit, and no uncommitted changes behind the figures


def test_rows_come_from_results_and_the_block_is_replaced_in_place(template):
    row = script.row_from_results(template / "results.json", "`CWR` (CWR\\*, head only)")
    import json

    summary = json.loads((template / "results.json").read_text())["summary"]
    table = script.markdown_table([row])
    assert table.splitlines()[-1] == (
        f"| `CWR` (CWR\\*, head only) | pool6 | {100 * summary['final_accuracy_mean']:.1f}% | "
        f"{100 * summary['average_accuracy_mean']:.1f}% | {100 * summary['forgetting_mean']:.1f} pts | "
        f"{100 * summary['backward_transfer_mean']:+.1f} pts | {summary['train_seconds_median_per_batch']:.3f} s |")
    text = f"intro\n{script.BEGIN}\nold table\n{script.END}\nrest\n"
    once = script.replace_block(text, table)
    assert once == f"intro\n{script.BEGIN}\n{table}\n{script.END}\nrest\n"
    assert script.replace_block(once, table) == once
    with pytest.raises(ValueError, match="exactly one"):
        script.replace_block("no markers here", table)


def test_the_readme_real_image_table_is_folder_methods_output():
    """The "Results with real features" table: its rows are folder_methods.py's (its method labels in
    its order, then joint training), in the shared formats, made at a commit without changes."""
    import folder_methods as real

    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index(real.BEGIN) + len(real.BEGIN):text.index(real.END)].strip()
    table, _, note = block.partition("\n\n")
    lines = table.splitlines()
    assert "\n".join(lines[:2]) == script.HEADER
    labels = [line.split(" | ")[0][2:] for line in lines[2:]]
    stopped = r"( \(stopped at batch \d+ of \d+\))?"  # a run stopped for time says so
    assert len(labels) == len(real.METHODS) + 1
    for label, (_, expected, _) in zip(labels, real.METHODS):
        assert re.fullmatch(re.escape(expected) + stopped, label), label
    assert re.fullmatch(re.escape(real.JOINT[1]).replace(r"\{k\}", r"\d+"), labels[-1]), labels[-1]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert re.fullmatch(r"\d+\.\d%", cells[2]) and re.fullmatch(r"\d+\.\d%", cells[3]), line
        if line is not lines[-1]:  # joint training is one batch: no forgetting or BWT to speak of
            assert re.fullmatch(r"-?\d+\.\d pts", cells[4]) and re.fullmatch(r"[+-]\d+\.\d pts", cells[5]), line
    assert re.fullmatch(r"Made by `python benchmarks/folder_methods.py DIR --weights W( --jobs \d+)?( --keep)? --readme "
                        r"README.md` at commit ([0-9a-f]{7,}) \(.*\)\.", note.strip()), note
