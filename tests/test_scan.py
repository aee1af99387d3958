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


def test_a_symlink_back_to_the_root_is_ignored_with_a_warning_not_followed(tmp_path):
    """`cat/up -> ..` used to make `train` learn dog images as cat and drop the dog folder."""
    from pipetrace.doctor import check_dataset
    from pipetrace.prepare import prepare_data
    from pipetrace.scan import OUTSIDE_CLASS
    from pipetrace.train import TrainConfig

    for i in range(3):
        make(tmp_path, f"cat/{i}.jpg")
        make(tmp_path, f"dog/{i}.jpg")
    os.symlink("..", tmp_path / "cat" / "up")
    os.symlink("../dog/0.jpg", tmp_path / "cat" / "borrowed.jpg")  # a file of another class
    scan = scan_image_folder(tmp_path)
    by_class = {c: sorted(os.path.relpath(p, tmp_path) for p, i in scan.samples
                          if scan.classes[i] == c) for c in scan.classes}
    assert by_class == {"cat": ["cat/0.jpg", "cat/1.jpg", "cat/2.jpg"],
                        "dog": ["dog/0.jpg", "dog/1.jpg", "dog/2.jpg"]}
    reasons = {os.path.basename(p): r for p, r in scan.ignored}
    assert reasons["up"] == reasons["borrowed.jpg"] == OUTSIDE_CLASS
    warned = [f for f in check_dataset(tmp_path).findings if OUTSIDE_CLASS in f.title]
    assert warned and warned[0].severity == "warning"
    setup = prepare_data(TrainConfig(data=str(tmp_path), image_size=8, val_fraction=0.0))
    assert any(OUTSIDE_CLASS in f.title and f.severity == "warning" for f in setup.findings)
