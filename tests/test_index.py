"""The dataset index (index.py): answers for unchanged files, per-file invalidation, safe
concurrent builders, the cache folder for read-only datasets, and its use by train and check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipetrace import index as index_mod
from pipetrace.config import TrainConfig
from pipetrace.doctor import CheckConfig, check_dataset
from pipetrace.images import ImageLoadError, LoadLimits, check_file
from pipetrace.index import INDEX_NAME, DatasetIndex
from pipetrace.prepare import prepare_data
from pipetrace.scan import find_splits

OLD = 1_600_000_000  # seconds: file times well outside the index's "racy" window


def make_tree(root: Path, per_class: int = 12, size: int = 16) -> list[Path]:
    paths = []
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            img = np.random.default_rng(i + 100 * (c == "dog")).integers(0, 256, (size, size, 3),
                                                                         dtype=np.uint8)
            p = root / c / f"{i:02d}.jpg"
            cv2.imwrite(str(p), img)
            paths.append(p)
    (root / "cat" / "page.jpg").write_text("<html>not a picture</html>")
    for p in root.rglob("*.jpg"):
        os.utime(p, (OLD, OLD))
    return paths


def indexed(root: Path) -> list[str]:
    """The files an index file holds rows for."""
    return json.loads((root / INDEX_NAME).read_text())["files"]["path"]


def test_second_run_answers_from_the_index_and_a_touched_file_is_read_again(tmp_path):
    paths = make_tree(tmp_path / "d")
    cfg = TrainConfig(data=str(tmp_path / "d"), image_size=16)
    first = prepare_data(cfg)
    assert first.info["index"]["checked"] == 25 and first.info["index"]["known"] == 0
    assert Path(first.info["index"]["path"]) == tmp_path / "d" / INDEX_NAME
    second = prepare_data(cfg)
    assert second.info["index"]["checked"] == 0
    assert second.bad_files == first.bad_files  # the unreadable file, from its kept reason
    assert [r[:3] for r in second.train_set.refs] == [r[:3] for r in first.train_set.refs]
    # one file rewritten with other bytes (a new size and time): only it is read again
    img = np.zeros((20, 24, 3), np.uint8)
    cv2.imwrite(str(paths[3]), img)
    os.utime(paths[3], (OLD + 10, OLD + 10))
    third = prepare_data(cfg)
    assert third.info["index"]["checked"] == 1
    ref = next(r for r in third.train_set.refs + third.val_set.refs if r.path == str(paths[3]))
    assert ref.header == ("jpeg", 24, 20)  # what the file holds now, not the kept entry


def test_prepare_pauses_the_garbage_collector_and_gives_it_back(tmp_path, monkeypatch):
    """The per-file objects are built with the collector paused (docs/performance.md, the
    dataset index); the caller's setting comes back, after a refused dataset too."""
    import gc

    from pipetrace import prepare
    make_tree(tmp_path / "d")
    seen = []
    real = prepare.check_files
    monkeypatch.setattr(prepare, "check_files",
                        lambda *a, **k: (seen.append(gc.isenabled()), real(*a, **k))[1])
    assert gc.isenabled()
    prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
    assert seen == [False, False] and gc.isenabled()
    with pytest.raises(prepare.DatasetRefused):
        prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16, max_bad_fraction=0))
    assert gc.isenabled()
    gc.disable()  # a caller who turned it off keeps it off
    try:
        prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_unreadable_files_leave_no_traceback_alive(tmp_path):
    """An unreadable file's error is kept without its traceback, whose frames would hold the
    file's first 256 KiB (20,000 bad files: ~5 GiB) until a collection found the cycle."""
    import gc

    from pipetrace.data import check_files
    make_tree(tmp_path / "d")
    for i in range(3):  # large enough that the header read takes its full 256 KiB
        (tmp_path / "d" / "dog" / f"bad{i}.jpg").write_bytes(b"\xff\xd8" + bytes(400_000))
    samples = find_splits(tmp_path / "d").train.samples
    gc.collect()
    gc.disable()  # as in prepare_data: nothing is collected while the checks run
    try:
        _, bad, _ = check_files(samples, LoadLimits())
        answers = DatasetIndex.open(tmp_path / "d").check_all([p for p, _ in samples])
        alive = [o for o in gc.get_objects()
                 if type(o) is ImageLoadError and o.__traceback__ is not None]
    finally:
        gc.enable()
    assert len(bad) == 4 and sum(isinstance(a, ImageLoadError) for a in answers) == 4
    assert alive == []


def test_limits_are_judged_from_the_kept_facts(tmp_path):
    make_tree(tmp_path / "d")
    prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
    index = DatasetIndex.open(tmp_path / "d")
    path = str(tmp_path / "d" / "dog" / "00.jpg")
    with pytest.raises(ImageLoadError) as err:
        index.checked(path, LoadLimits(max_pixels=100))
    assert index.known == 1 and index.learnt == 0  # refused without reading the file
    with pytest.raises(ImageLoadError) as direct:
        check_file(path, LoadLimits(max_pixels=100))
    assert str(err.value) == str(direct.value)


def test_the_index_is_not_listed_by_the_scan_and_can_be_turned_off(tmp_path):
    make_tree(tmp_path / "d")
    before = find_splits(tmp_path / "d")
    prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
    assert (tmp_path / "d" / INDEX_NAME).is_file()
    after = find_splits(tmp_path / "d")
    assert after.train.ignored == before.train.ignored and after.beside == before.beside
    (tmp_path / "d" / INDEX_NAME).unlink()
    off = prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16, dataset_index=False))
    assert not (tmp_path / "d" / INDEX_NAME).exists() and off.info["index"]["path"] is None


def test_a_damaged_index_is_ignored_and_replaced(tmp_path):
    make_tree(tmp_path / "d")
    (tmp_path / "d" / INDEX_NAME).write_text('{"format": "pipetrace-index", "version": 2, "fi')
    setup = prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
    assert setup.info["index"]["checked"] == 25
    assert len(indexed(tmp_path / "d")) == 25
    # a column of the wrong type (or length) makes the whole file foreign: read afresh
    doc = json.loads((tmp_path / "d" / INDEX_NAME).read_text())
    doc["files"]["size"][3] = "927"
    (tmp_path / "d" / INDEX_NAME).write_text(json.dumps(doc))
    assert prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16)
                        ).info["index"]["checked"] == 25


def test_an_unwritable_dataset_keeps_its_index_in_the_user_cache(tmp_path, monkeypatch):
    make_tree(tmp_path / "d")
    cache = tmp_path / "cache"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, so nothing can be written under it")
    monkeypatch.setattr(index_mod, "cache_dir", lambda: cache)
    real = index_mod.locations
    monkeypatch.setattr(index_mod, "locations",
                        lambda root: (blocked / INDEX_NAME, real(root)[1]))
    setup = prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
    where = Path(setup.info["index"]["path"])
    assert where.parent == cache and where.is_file()
    again = prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
    assert again.info["index"]["checked"] == 0 and Path(again.info["index"]["path"]) == where


def test_racy_files_are_not_kept(tmp_path):
    paths = make_tree(tmp_path / "d")
    os.utime(paths[0])  # modified just now: its stamp may not change with its next write
    prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
    files = indexed(tmp_path / "d")
    assert os.path.relpath(paths[0], tmp_path / "d") not in files and len(files) == 24
    # nor the quick checks' findings, which were made from that file's bytes too
    assert json.loads((tmp_path / "d" / INDEX_NAME).read_text())["quick"] is None


BUILD = """
import sys
from pipetrace.index import DatasetIndex
from pipetrace.images import ImageLoadError
root, paths = sys.argv[1], sys.argv[2:]
index = DatasetIndex.open(root)
for p in paths:
    try:
        index.checked(p)
    except ImageLoadError:
        pass
index.save()
"""


def test_two_builders_at_once_leave_a_whole_index_with_both_their_files(tmp_path):
    paths = [str(p) for p in make_tree(tmp_path / "d", per_class=20)]
    halves = (paths[::2], paths[1::2])
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path / "d"), *half])
             for half in halves]
    seen = 0
    while any(p.poll() is None for p in procs):  # a reader never sees half a file
        if (tmp_path / "d" / INDEX_NAME).exists():
            doc = json.loads((tmp_path / "d" / INDEX_NAME).read_text())
            assert doc["format"] == "pipetrace-index"
            seen += 1
        time.sleep(0.005)
    assert [p.returncode for p in procs] == [0, 0]
    files = indexed(tmp_path / "d")
    # the second writer merged what the first had written: every file is there
    assert sorted(files) == sorted(os.path.relpath(p, tmp_path / "d") for p in paths)
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.endswith(".tmp")]


def test_check_reads_only_what_changed(tmp_path):
    paths = make_tree(tmp_path / "d")
    first = check_dataset(tmp_path / "d", CheckConfig())
    assert first.index["checked"] == 25
    second = check_dataset(tmp_path / "d", CheckConfig())
    assert second.index == {**first.index, "known": 25, "checked": 0}
    assert second.files == first.files and second.findings == first.findings
    cv2.imwrite(str(paths[5]), np.full((16, 16, 3), 7, np.uint8))
    os.utime(paths[5], (OLD + 5, OLD + 5))
    third = check_dataset(tmp_path / "d", CheckConfig())
    assert third.index["checked"] == 1
    rec = next(f for f in third.files if f.path == str(paths[5]))
    assert rec.colours == 1  # the new, flat picture: read again, not the kept record
    # other settings, other records: --fast does not reuse the strict pass's verdicts
    fast = check_dataset(tmp_path / "d", CheckConfig(strict=False))
    assert fast.index["checked"] == 25


def test_train_after_check_reads_the_headers_check_did_not_keep(tmp_path):
    """`check` keeps its records (and hashes) without header facts; a `train` start after it
    reads the headers it lacks and keeps the check's records in the same entries."""
    make_tree(tmp_path / "d")
    check_dataset(tmp_path / "d", CheckConfig())
    setup = prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
    assert setup.info["index"]["checked"] == 25 and len(setup.bad_files) == 1
    again = check_dataset(tmp_path / "d", CheckConfig())
    assert again.index["checked"] == 0  # the check's records survived the headers' arrival
    assert prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16)
                        ).info["index"]["checked"] == 0


def test_the_quick_checks_are_kept_only_for_the_inputs_they_were_made_from(tmp_path, monkeypatch):
    from pipetrace import doctor

    paths = make_tree(tmp_path / "d")
    cfg = TrainConfig(data=str(tmp_path / "d"), image_size=16)
    first = prepare_data(cfg)
    assert not [f for f in first.findings if f.check == "duplicate"]
    # a file rewritten with another file's bytes (new stamp): the checks run again and see it
    paths[14].write_bytes(paths[0].read_bytes())
    os.utime(paths[14], (OLD + 20, OLD + 20))
    second = prepare_data(cfg)
    dup = [f for f in second.findings if f.check == "duplicate"]
    assert len(dup) == 1 and set(dup[0].paths) == {str(paths[0]), str(paths[14])}

    def fail(*args):
        raise AssertionError("the quick checks ran again on an unchanged folder")

    monkeypatch.setattr(doctor, "_quick_check", fail)
    third = prepare_data(cfg)  # nothing changed: the findings are the kept ones
    assert third.findings == second.findings
    # other code (a changed pipetrace) or other settings: the kept findings are not used
    monkeypatch.setattr(doctor, "_checks_code", lambda: b"other checks")
    with pytest.raises(AssertionError, match="ran again"):
        prepare_data(cfg)
    monkeypatch.undo()
    with monkeypatch.context() as m:
        m.setattr(doctor, "_quick_check", fail)
        with pytest.raises(AssertionError, match="ran again"):
            prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16, val_fraction=0.3))


def test_a_second_save_keeps_what_the_first_merged(tmp_path):
    paths = [str(p) for p in make_tree(tmp_path / "d")]
    a, b = DatasetIndex.open(tmp_path / "d"), DatasetIndex.open(tmp_path / "d")
    b.checked(paths[0])
    b.save()
    a.checked(paths[1])
    a.save()  # merges b's row
    a.checked(paths[2])
    a.save()
    assert sorted(indexed(tmp_path / "d")) == sorted(
        os.path.relpath(p, tmp_path / "d") for p in paths[:3])


@pytest.mark.parametrize("junk", [[1, 2], [{"check": "leakage"}], [{"bogus": 1, "paths": []}]])
def test_kept_findings_that_are_not_findings_are_made_afresh(tmp_path, junk):
    make_tree(tmp_path / "d")
    cfg = TrainConfig(data=str(tmp_path / "d"), image_size=16)
    first = prepare_data(cfg)
    doc = json.loads((tmp_path / "d" / INDEX_NAME).read_text())
    doc["quick"]["findings"] = junk  # the digest left as it was: only the records are wrong
    (tmp_path / "d" / INDEX_NAME).write_text(json.dumps(doc))
    assert prepare_data(cfg).findings == first.findings


def test_damaged_rows_and_records_are_not_used(tmp_path):
    make_tree(tmp_path / "d")
    cfg = TrainConfig(data=str(tmp_path / "d"), image_size=16)
    prepare_data(cfg)
    check_dataset(tmp_path / "d", CheckConfig())
    doc = json.loads((tmp_path / "d" / INDEX_NAME).read_text())
    good = json.dumps(doc)
    row = next(i for i, f in enumerate(doc["files"]["fmt"]) if f is not None)
    doc["files"]["width"][row] = None  # a header's facts without its width: not our file
    (tmp_path / "d" / INDEX_NAME).write_text(json.dumps(doc))
    assert prepare_data(cfg).info["index"]["checked"] == 25
    doc = json.loads(good)
    for records in filter(None, doc["files"]["check"]):
        for setting in records:
            records[setting] = {"x": 1}  # check's records, damaged
    (tmp_path / "d" / INDEX_NAME).write_text(json.dumps(doc))
    again = check_dataset(tmp_path / "d", CheckConfig())
    assert again.index["checked"] == 25 and again.findings


def test_check_all_answers_as_check_file_does(tmp_path):
    """The bulk answers (each kind of header judged once) are check_file's, file by file,
    under any limits; an unreadable file's error is its own; a changed file is read again."""
    paths = [str(p) for p in make_tree(tmp_path / "d")] + [str(tmp_path / "d/cat/page.jpg")]
    prepare_data(TrainConfig(data=str(tmp_path / "d"), image_size=16))
    cv2.imwrite(paths[4], np.zeros((20, 30, 3), np.uint8))  # changed since the index
    os.utime(paths[4], (OLD + 30, OLD + 30))
    index = DatasetIndex.open(tmp_path / "d")
    for limits in (LoadLimits(), LoadLimits(max_pixels=300), LoadLimits(max_aspect=1.2)):
        for path, got in zip(paths, index.check_all(paths, limits), strict=True):
            try:
                want = check_file(path, limits)
            except ImageLoadError as exc:
                want = exc
            assert type(got) is type(want) and str(got) == str(want), path
            if isinstance(want, tuple):
                assert got == want
    assert index.learnt == 1  # the changed file, read once; later passes know it
