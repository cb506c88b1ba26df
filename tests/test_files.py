from pathlib import Path

import pytest

from perwatt._files import atomic_write_text


@pytest.mark.parametrize("fsync", [False, True])
def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path, fsync: bool) -> None:
    target = tmp_path / "deep" / "dir" / "out.json"
    assert atomic_write_text(target, "first\n", fsync=fsync) == target
    atomic_write_text(target, "second\n", fsync=fsync)
    assert target.read_text() == "second\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_failed_write_keeps_the_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "good\n")
    (tmp_path / "out.txt.tmp").mkdir()  # the temp path cannot be opened as a file
    with pytest.raises(OSError):
        atomic_write_text(target, "never seen\n")
    assert target.read_text() == "good\n"


def test_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a_directory"
    target.mkdir()  # a file cannot replace a directory
    with pytest.raises(OSError):
        atomic_write_text(target, "text\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory"]


def test_slug_keeps_file_name_characters_only() -> None:
    from perwatt._files import slug

    assert slug(" Llama 3/8B: fp8 ") == "Llama-3-8B-fp8"
    assert slug("...") == "run"
    assert slug("", default="x") == "x"
