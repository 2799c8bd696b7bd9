"""What --out may hold before a run: an unfinished run with no finished checkpoint (killed, or
stopped by a second Ctrl-C, before or during its first checkpoint) starts over; finished results,
unreadable results and foreign files are refused; a folder that cannot be created is refused
before anything expensive. Plain files, no JAX."""

import json
from pathlib import Path

import pytest

from conftest import train_script
from pfedhn_jax.errors import UserError
from pfedhn_jax.results import check_output_path, prepare_output_dir, restartable


def results(folder: Path, status: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({} if status is None else {"status": status, "curves": []}))


def test_an_unfinished_run_without_a_checkpoint_starts_over(tmp_path, capsys):
    out = tmp_path / "run"
    results(out, "running")
    (out / "results.json.tmp").write_text("{")  # a write killed before its rename
    (out / "checkpoints" / "2.orbax-checkpoint-tmp-1700000000").mkdir(parents=True)  # a save killed midway
    assert restartable(out) == "an unfinished run (status running)"
    assert prepare_output_dir(str(out), overwrite=False, resume=False) == out
    assert out.is_dir() and not any(out.iterdir())
    assert "starts over from step 0" in capsys.readouterr().err


def test_an_unfinished_group_starts_over(tmp_path):
    out = tmp_path / "g"
    results(out / "seed-5", "interrupted")
    results(out / "lr-0.1" / "seed-6", "running")
    (out / "summary.json").write_text("{}")
    (out / "summary.md").write_text("")
    assert restartable(out) is not None
    prepare_output_dir(str(out), False, False)
    assert not any(out.iterdir())


@pytest.mark.parametrize("case", ["finished", "paused", "no status", "foreign file", "foreign folder"])
def test_other_folders_are_refused_and_kept(tmp_path, case):
    out = tmp_path / "run"
    results(out, {"finished": "finished", "paused": "paused"}.get(case, "running" if "foreign" in case else None))
    if case == "foreign file":
        (out / "notes.txt").write_text("mine")
    if case == "foreign folder":
        (out / "seed-1" / "data").mkdir(parents=True)
    before = sorted(str(p) for p in out.rglob("*"))
    assert restartable(out) is None
    with pytest.raises(UserError, match="already holds results; choose a new folder, or pass --overwrite"):
        prepare_output_dir(str(out), False, False)
    assert sorted(str(p) for p in out.rglob("*")) == before


def test_a_folder_holding_a_checkpoint_is_resumed_not_cleared(tmp_path):
    out = tmp_path / "run"
    results(out, "running")
    (out / "checkpoints" / "4").mkdir(parents=True)
    assert prepare_output_dir(str(out), False, False) == out
    assert (out / "results.json").is_file()


def test_an_out_that_cannot_be_a_folder_is_refused_without_a_trace(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(UserError, match=r"--out: .*file/runs/a cannot be created: .*file is a file"):
        check_output_path(f / "runs" / "a")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_output_path(f)
    if Path("/proc/self").is_dir():  # Linux: procfs takes no new folders, even from root
        with pytest.raises(UserError, match=r"--out: /proc/runs cannot be created \("):
            check_output_path("/proc/runs")
    check_output_path(tmp_path / "new" / "deeper")  # creatable: accepted, and nothing is left behind
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv,message", [
    (["--out", "/proc/runs"], "error: --out: /proc/runs cannot be created"),
    (["--seeds", "1,2", "--seed", "3"], "error: --seeds: replaces --seed; pass one of --seed and --seeds"),
    (["--lrs", "0.1,0.2", "--lr=0.3"], "error: --lrs: replaces --lr"),
])
def test_cli_refuses_in_one_line_before_loading(argv, message, capsys, tmp_path):
    rc = train_script().main(["--data-dir", str(tmp_path), "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [err[0]] and err[0].startswith(message), err  # no "loading ..." line before it
