"""Atomic writes: the old file survives a failed write; user-fixable failures are one-line errors."""

import pytest

from dnnspec.errors import UsageError
from dnnspec.fileio import atomic_write, atomic_write_text


def test_replaces_content_and_leaves_no_temp_file(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "good")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == "good"
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_missing_folder_is_a_usage_error_unless_asked_to_create(tmp_path):
    target = tmp_path / "no" / "such" / "model.onnx"
    with pytest.raises(UsageError, match="the folder .* does not exist"):
        atomic_write_text(target, "x")
    atomic_write_text(target, "x", make_parents=True)
    assert target.read_text() == "x"


def test_a_folder_in_the_way_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="it is a folder"):
        atomic_write_text(tmp_path, "x")


def test_new_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "m.onnx", "x")
    finally:
        os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o644


def test_remove_temporaries_deletes_only_leftovers_of_the_given_names(tmp_path):
    from dnnspec.fileio import remove_temporaries, temporaries

    left = [tmp_path / ".checkpoint.npz.k3j2h1g0.tmp", tmp_path / ".history.csv.abc_1234.tmp"]
    keep = [tmp_path / "checkpoint.npz", tmp_path / ".other.npz.abcdefgh.tmp", tmp_path / "notes.tmp",
            tmp_path / ".checkpoint.npz.k3j2h1g0.tmp.bak"]
    for p in left + keep:
        p.write_bytes(b"x")
    names = ("checkpoint.npz", "history.csv", "best.npz")
    assert temporaries(tmp_path, names) == sorted(left)
    assert remove_temporaries(tmp_path, names) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
    assert remove_temporaries(tmp_path / "missing", names) == []


def test_a_killed_write_leaves_a_temporary_that_remove_temporaries_finds(tmp_path):
    """The name pattern of remove_temporaries is the one atomic_write really uses."""
    from dnnspec.fileio import temporaries

    seen = []

    def look(f):
        seen.extend(temporaries(tmp_path, ["m.onnx"]))
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "m.onnx", look)
    assert len(seen) == 1 and seen[0].name.startswith(".m.onnx.")
