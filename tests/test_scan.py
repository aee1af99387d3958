"""Dataset scanning: stable class indices, junk ignored and counted, symlinks tamed."""

import os

import pytest

from conftest import coloured_image, write_image
from pipetrace.scan import find_splits, scan_image_folder


def make(root, rel):
    return write_image(root / rel, coloured_image(8, 8))


def test_junk_folders_are_not_classes_and_files_are_counted(tmp_path):
    for rel in ("cat/1.jpg", "cat/2.PNG", "dog/1.JpEg", "__MACOSX/cat/._1.jpg",
                ".ipynb_checkpoints/x.png", "dog/.hidden.jpg"):
        make(tmp_path, rel)
    (tmp_path / "dog" / "notes.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    scan = scan_image_folder(tmp_path)
    assert scan.classes == ["cat", "dog", "empty"]  # empty keeps its index
    assert scan.counts() == {"cat": 2, "dog": 1, "empty": 0}
    reasons = {os.path.basename(p): r for p, r in scan.ignored}
    assert reasons["notes.txt"] == "not an image file extension"
    assert "hidden" in reasons[".hidden.jpg"]
    assert "__MACOSX" in reasons and ".ipynb_checkpoints" in reasons


def test_unicode_and_spaces_in_names(tmp_path):
    make(tmp_path, "chat noir/été 1.jpg")
    make(tmp_path, "犬/写真.png")
    scan = scan_image_folder(tmp_path)
    assert scan.classes == ["chat noir", "犬"] and len(scan.samples) == 2


def test_symlink_loop_and_alias_do_not_duplicate(tmp_path):
    make(tmp_path, "a/1.jpg")
    make(tmp_path, "a/sub/2.jpg")
    os.symlink(tmp_path / "a", tmp_path / "a" / "sub" / "loop")  # a loop
    os.symlink(tmp_path / "a", tmp_path / "b")  # an aliased class folder
    scan = scan_image_folder(tmp_path)
    paths = [os.path.realpath(p) for p, _ in scan.samples]
    assert len(paths) == len(set(paths)) == 2
    assert any("already scanned" in r for _, r in scan.ignored)


def test_symlink_outside_root_is_ignored(tmp_path):
    outside = make(tmp_path / "outside", "secret.jpg")
    make(tmp_path / "root", "a/1.jpg")
    os.symlink(outside, tmp_path / "root" / "a" / "2.jpg")
    scan = scan_image_folder(tmp_path / "root")
    assert len(scan.samples) == 1
    assert any("outside the dataset root" in r for _, r in scan.ignored)


def test_splits_use_train_and_val_with_train_classes(image_folder):
    splits = find_splits(image_folder)
    assert splits.layout == "train+val"
    assert splits.train.classes == splits.val.classes == ["a", "b"]
    assert len(splits.train.samples) == 12 and len(splits.val.samples) == 4


def test_test_folder_is_used_for_validation(tmp_path):
    make(tmp_path, "train/a/1.jpg")
    make(tmp_path, "test/a/1.jpg")
    assert find_splits(tmp_path).layout == "train+test"


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
