"""`pipetrace check`: every case of the messy tree reported, strictly, with a stable exit code."""

import json
import os
import random
from dataclasses import replace

import cv2
import pytest

from conftest import run_cli
from messy import HTML_CLASS, build_messy_tree, encode, photo
from pipetrace.doctor import CheckConfig, check_dataset, inspect_file
from pipetrace.likeness import HASH_BITS, difference_hash, near_pairs


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return build_messy_tree(tmp_path_factory.mktemp("doctor"))


@pytest.fixture(scope="module")
def report(messy):
    return check_dataset(messy.root)


def findings(report, check, severity=None):
    return [f for f in report.findings if f.check == check
            and (severity is None or f.severity == severity)]


def test_every_entry_has_one_status_and_the_counts_add_up(messy, report):
    seen = {f.path: f for f in report.files}
    assert len(seen) == len(report.files), "an entry was reported twice"
    assert set(seen) == set(messy.expected), "entries missing or unexpected"
    for path, (status, why) in messy.expected.items():
        rec = seen[path]
        assert rec.status == status, (path, rec.status, rec.reason)
        if status == "loaded":
            assert rec.reason == "" and rec.width > 0 and len(rec.sha256) == 64
        else:
            assert why.lower() in rec.reason.lower(), (path, rec.reason)
    n = report.status_counts()
    assert n["loaded"] + n["skipped"] + n["ignored"] == len(report.files)
    assert sum(s.seen for s in report.splits) + sum(f.split == "" for f in report.files) \
        == len(report.files)
    assert report.exit_code == 2


def test_every_unusable_file_is_an_error_with_its_reason(messy, report):
    errors = {f.paths[0]: f for f in findings(report, "unreadable", "error")}
    assert set(errors) == messy.checks["unreadable"]
    for path in messy.strict_only:  # training's decoder accepts these: the finding says so
        assert "only this strict pass" in errors[path].evidence


def test_strict_pass_catches_corrupt_jpeg_data_that_opencv_half_decodes(messy):
    for path in messy.strict_only:
        assert inspect_file(path).status == "skipped"
        # The training decoder's view: OpenCV returns a picture (the grey-filled one).
        fast = inspect_file(path, cfg=CheckConfig(strict=False))
        assert fast.status == "loaded", path


def test_limits_are_enforced_from_the_header(messy, report):
    reasons = {os.path.basename(f.path): f.reason for f in report.files}
    assert "refused before decoding" in reasons["bomb.png"]
    assert "refused before resizing" in reasons["strip.png"]
    assert "scans" in reasons["scans.jpg"]


@pytest.mark.parametrize("what", ["grayscale", "alpha", "palette", "16-bit", "CMYK", "animated",
                                  "multi-page"])
def test_conversions_are_named_with_how(messy, report, what):
    (f,) = [f for f in findings(report, "conversion", "info") if f.evidence.startswith(what)]
    assert messy.checks["conversion:" + what] <= set(f.paths)
    if what == "16-bit":
        assert "scaled" in f.evidence and "not clipped to white" in f.evidence


def test_exif_rotation_is_reported(messy, report):
    (f,) = findings(report, "exif")
    assert set(f.paths) == messy.checks["exif"]


def test_exact_duplicates_near_duplicates_and_leakage(messy, report):
    dup = [set(f.paths) for f in findings(report, "duplicate", "warning")]
    assert messy.checks["duplicate"] & {p for g in dup for p in g} == messy.checks["duplicate"]
    leaks = {(f.severity, frozenset(f.paths)) for f in findings(report, "leakage")}
    assert ("error", frozenset(messy.checks["leakage:exact"])) in leaks
    assert ("warning", frozenset(messy.checks["leakage:near"])) in leaks
    conflict = [f for f in findings(report, "duplicate") if "different classes" in f.title]
    assert conflict and "conflicting labels" in conflict[0].evidence


def test_placeholders_are_flagged_and_photos_are_not(messy, report):
    flagged = {f.paths[0] for f in findings(report, "placeholder", "warning")}
    assert flagged == messy.checks["placeholder"]


def test_class_problems(messy, report):
    collisions = [set(map(os.path.basename, f.paths)) for f in findings(report, "class-names",
                                                                        "error")]
    assert {"Wasps", "wasps"} in collisions
    assert {"café", "cafe\u0301"} in collisions
    empty = findings(report, "empty-class", "warning")
    assert any("'empty'" in f.title and "train" in f.title for f in empty)
    assert report.classes.index("empty") < report.classes.index("new\nline")  # empty keeps a slot
    assert not {"__MACOSX", ".ipynb_checkpoints", "zz_alias", "loop"} & set(report.classes)


def test_symlinks_are_tamed(messy, report):
    reasons = {os.path.basename(f.path): (f.status, f.reason) for f in report.files}
    assert reasons["loop"][0] == reasons["zz_alias"][0] == "ignored"
    samples = [os.path.realpath(f.path) for f in report.files if f.status != "ignored"]
    assert len(samples) == len(set(samples)), "a file became two samples through a symlink"
    outside = {f.severity for f in findings(report, "ignored") if "outside" in f.title}
    assert outside == {"warning"}


@pytest.mark.parametrize("kind, severity, words", [
    ("names:utf8", "warning", "not valid UTF-8"), ("names:control", "warning", "newlines"),
    ("names:html", "info", "HTML"), ("names:spaces", "info", "spaces"),
    ("names:nfc", "info", "NFC"), ("file-names", "warning", "differ only by case")])
def test_names_that_need_care(messy, report, kind, severity, words):
    check = kind.split(":")[0]
    (f,) = [f for f in findings(report, check, severity) if words in f.title]
    assert messy.checks[kind] <= set(f.paths)


def test_real_photos_flag_the_gif_placeholder(photos):
    report = check_dataset(photos)
    flagged = [os.path.basename(f.paths[0]) for f in findings(report, "placeholder")]
    assert flagged == ["imageNotFound.gif"]
    assert report.status_counts()["loaded"] == 245 and report.exit_code == 1


def test_cli_summary_first_and_escaped(messy):
    proc = run_cli("check", str(messy.root), "--max-paths", "100")
    assert proc.returncode == 2, proc.stderr[-2000:]
    out = proc.stdout
    assert out.startswith("pipetrace check ") and "errors (exit 2)" in out.splitlines()[2]
    assert "\x1b" not in out and "new\\x0aline" in out  # no raw control characters
    assert "caf\ufffd" in out  # not UTF-8: a visible replacement, no crash
    assert HTML_CLASS in out  # plain text in a terminal, shown as it is


def test_cli_json_is_valid_and_complete(messy, report):
    proc = run_cli("check", str(messy.root), "--json")
    assert proc.returncode == 2, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["format"] == "pipetrace-check" and doc["exit_code"] == 2
    assert doc["summary"]["seen"] == len(report.files) == len(doc["files"])
    bad = [f for f in doc["files"] if "path_bytes" in f]
    assert bad and all("\ufffd" in f["path"] and "\\x" in f["path_bytes"] for f in bad)
    proc.stdout.encode("ascii")  # ensure_ascii: any terminal or pipe takes it


def test_clean_tree_exits_zero_and_warnings_exit_one(tmp_path):
    for cls in ("a", "b"):
        for i in range(3):
            (tmp_path / cls).mkdir(exist_ok=True)
            (tmp_path / cls / f"{i}.jpg").write_bytes(encode(photo(10 * i + ord(cls)), ".jpg"))
    assert check_dataset(tmp_path).exit_code == 0
    (tmp_path / "c").mkdir()  # an empty class: a warning
    assert check_dataset(tmp_path).exit_code == 1


def test_difference_hash_survives_resizing_but_separates_photos():
    a = photo(1, 120, 160)
    smaller = cv2.imdecode(cv2.imencode(".jpg", cv2.resize(a, (80, 60)),
                                        [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_COLOR)
    dist = lambda x, y: (difference_hash(x) ^ difference_hash(y)).bit_count()  # noqa: E731
    assert dist(a, smaller) <= CheckConfig().near_distance
    assert min(dist(photo(i), photo(j)) for i in range(6) for j in range(i + 1, 6)) > 20


def test_near_pairs_equals_brute_force():
    rng = random.Random(0)
    base = [rng.getrandbits(HASH_BITS) for _ in range(40)]
    hashes = base + [h ^ (1 << rng.randrange(HASH_BITS)) ^ (1 << rng.randrange(HASH_BITS))
                     for h in base[:20]] + [0] * 5
    for d in (0, 2, 6):
        brute = {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                 if (hashes[i] ^ hashes[j]).bit_count() <= d}
        assert near_pairs(hashes, d) == brute


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        CheckConfig().strict = False  # type: ignore[misc]
    assert replace(CheckConfig(), near_distance=3).near_distance == 3
