"""Loading never kills a run; files we write survive SIGKILL, read-only folders and full disks;
what a dataset names is escaped wherever it is shown. See docs/reliability.md."""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from messy import HTML_CLASS, build_messy_tree, encode, photo
from pipetrace import checkpoint as ckpt_io
from pipetrace import images
from pipetrace.data import ImageDataset, LoaderConfig, make_loader
from pipetrace.files import write_text_atomic
from pipetrace.images import ImageLoadError, LoadLimits
from pipetrace.report.html import render_html
from pipetrace.scan import find_splits
from pipetrace.train import TrainConfig, fit
from pipetrace.transforms import Preprocess

SRC = str(Path(__file__).resolve().parents[1] / "src")
FOUR_GB = 4 << 30


def run_python(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout's pipetrace."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_cli_limited(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m pipetrace ARGS` in a process limited to 4 GB of address space.

    The limit is set by the child itself before pipetrace is imported (the same as a
    ``preexec_fn``, without running Python between fork and exec in a threaded parent).
    """
    code = f"""
        import resource, runpy, sys
        resource.setrlimit(resource.RLIMIT_AS, ({FOUR_GB}, {FOUR_GB}))
        sys.argv = ["pipetrace", *sys.argv[1:]]
        runpy.run_module("pipetrace", run_name="__main__")
    """
    return run_python(code, *args, timeout=timeout)


def train_args(root, out, workers: int) -> list[str]:
    # One batch holds every training image: with drop_last the remainder of an epoch is not
    # read at all, so its bad files would be listed only in a later epoch.
    return ["train", str(root), "--out", str(out), "--epochs", "1", "--model", "pipenet-tiny",
            "--image-size", "64", "--crop-pct", "1.0", "--batch-size", "64", "--workers",
            str(workers), "--max-bad-fraction", "0.5", "--device", "cpu", "--trace-every", "0"]


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return build_messy_tree(tmp_path_factory.mktemp("reliability"))


def undecodable(messy) -> set[str]:
    """What training's decoder refuses: every skipped file but the strict-only ones."""
    return {p for p, (status, _) in messy.expected.items() if status == "skipped"} \
        - messy.strict_only


@pytest.fixture(scope="module")
def messy_run(messy, tmp_path_factory):
    """`pipetrace train` for one epoch, 2 workers, under a 4 GB address-space limit."""
    out = tmp_path_factory.mktemp("run") / "run"
    proc = run_cli_limited(*train_args(messy.root, out, workers=2))
    return proc, out


# -- loading never kills a run -------------------------------------------------------------------

def test_cli_never_dies_by_a_signal_under_4gb(messy, messy_run):
    proc, _ = messy_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # < 0: a signal
    check = run_cli_limited("check", str(messy.root), "--json")
    assert check.returncode == 2, check.stderr[-3000:]
    assert json.loads(check.stdout)["summary"]["skipped"] == len(undecodable(messy)) + 2


def test_train_with_workers_skips_exactly_the_undecodable_files(messy, messy_run):
    proc, out = messy_run
    doc = json.loads((out / "trace.json").read_text(encoding="utf-8"))
    listed = {os.path.basename(p) for p, _ in doc["training"]["bad_files"]}
    assert listed == {os.path.basename(p) for p in undecodable(messy)}
    assert len(doc["training"]["epochs"]) == 1
    assert "Skipped" in proc.stdout and "truncated JPEG" in proc.stdout


def test_train_in_process_skips_exactly_the_undecodable_files(messy, tmp_path):
    cfg = TrainConfig(data=str(messy.root), out=str(tmp_path / "run"), model="pipenet-tiny",
                      epochs=1, batch_size=64, image_size=64, crop_pct=1.0, workers=0,
                      max_bad_fraction=0.5, device="cpu", trace_every=0)
    result = fit(cfg)
    assert len(result.records) == 1 and result.records[0].train_loss == result.records[0].train_loss
    assert {p for p, _ in result.bad_files} == undecodable(messy)
    for path, reason in result.bad_files:  # each with its own reason, naming the file
        assert os.path.basename(path) in reason or "\ufffd" in reason, reason
    # Corrupt scan data is not caught by the training decoder: `check` is the strict pass.
    assert not messy.strict_only & {p for p, _ in result.bad_files}


def test_max_bad_fraction_refuses_to_start_with_a_summary(messy, tmp_path):
    from pipetrace.train import DatasetRefused

    cfg = TrainConfig(data=str(messy.root), out=str(tmp_path / "run"), model="pipenet-tiny",
                      epochs=1, image_size=64, max_bad_fraction=0.05, device="cpu")
    with pytest.raises(DatasetRefused, match=r"cannot be read, over max_bad_fraction") as info:
        fit(cfg)
    message = str(info.value)
    listed = [os.path.basename(p) for p in undecodable(messy) if os.path.basename(p) in message]
    assert len(listed) > 3 and message.startswith(f"{len(listed)} of ")  # all, not 3
    assert "--max-bad-fraction" in message and "pipetrace check" in message


@pytest.mark.parametrize("workers", [0, 2])
def test_file_that_disappears_or_changes_after_the_scan_is_skipped(image_folder, workers):
    samples = find_splits(image_folder).train.samples
    ds = ImageDataset(samples, Preprocess(size=16, crop_pct=1.0))
    gone, changed = Path(samples[0][0]), Path(samples[3][0])
    gone.unlink()
    changed.write_bytes(encode(photo(99, 40, 40), changed.suffix))  # a valid, different image
    batches = list(make_loader(ds, LoaderConfig(batch_size=4, workers=workers), shuffle=False))
    assert sum(len(b) for b in batches) == len(samples) - 2
    reasons = sorted(r for b in batches for _, r in b.bad)
    assert len(reasons) == 2
    assert gone.name in reasons[0] + reasons[1]
    assert any("disappeared" in r for r in reasons) and any("changed" in r for r in reasons)


AFTER_OPENCV_THREADS = """
    import sys, cv2, numpy as np
    from pipetrace.data import ImageDataset, LoaderConfig, make_loader
    from pipetrace.transforms import Preprocess

    folder = sys.argv[1]
    samples = []
    for i in range(8):
        path = f"{folder}/{i}.png"
        cv2.imwrite(path, np.full((40, 40, 3), 30 * i, np.uint8))
        samples.append((path, i % 2))
    big = np.zeros((3000, 3000, 3), np.uint8)
    cv2.resize(big, (1000, 1000), interpolation=cv2.INTER_AREA)  # OpenCV's thread pool now runs
    ds = ImageDataset(samples, Preprocess(size=16, crop_pct=1.0))
    batches = list(make_loader(ds, LoaderConfig(batch_size=4, workers=2), shuffle=False))
    print(sum(len(b) for b in batches))
"""


def test_workers_start_after_the_parent_used_opencv_threads(tmp_path):
    # `train --stats dataset --workers 2` decodes in the main process first; its forked
    # workers then hung for ever in cv2.setNumThreads(1) (pthread_cond_destroy).
    proc = run_python(AFTER_OPENCV_THREADS, str(tmp_path), timeout=120)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "8", proc.stderr[-2000:]


def test_decoding_one_file_is_bounded_in_time(monkeypatch):
    big = encode(np.zeros((1100, 1000, 3), np.uint8), ".png")  # over the watchdog's 1 MP
    real = cv2.imdecode

    def slow_imdecode(buf, flags):  # a decoder stuck on a hostile file
        time.sleep(3)
        return real(buf, flags)

    monkeypatch.setattr(images.cv2, "imdecode", slow_imdecode)
    t0 = time.perf_counter()
    with pytest.raises(ImageLoadError, match=r"longer than 0\.2 s"):
        images.decode_bgr(big, "stuck.png", limits=LoadLimits(max_decode_seconds=0.2))
    assert time.perf_counter() - t0 < 2
    monkeypatch.setattr(images.cv2, "imdecode", real)
    assert images.decode_bgr(big, "ok.png").shape == (1100, 1000, 3)


def test_progressive_scan_bomb_is_refused_before_decoding():
    jpg = encode(photo(3), ".jpg")
    bomb = jpg[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * 300 + b"\xff\xd9"
    with pytest.raises(ImageLoadError, match="301 scans"):
        images.check_header(bomb, "bomb.jpg")


# -- files we write --------------------------------------------------------------------------------

KILLER = """
    import json, os, random, signal, sys, time
    import torch
    from pipetrace import checkpoint as ck

    path, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)

    def ckpt(i):
        return {"format": ck.FORMAT, "version": ck.VERSION, "epoch": i,
                "model_state": {"w": torch.full((128, 128), float(i))}, "classes": ["a", "b"],
                "preprocess": {},
                "model_config": {"name": "pipenet-tiny", "num_classes": 2}}

    ck.save_checkpoint(path, ckpt(0))
    epochs = [0]
    for k in range(kills):
        pid = os.fork()
        if pid == 0:  # the saver: saves again and again until it is killed
            i = epochs[-1] + 1
            while True:
                ck.save_checkpoint(path, ckpt(i))
                i += 1
        time.sleep(rng.uniform(0.0, 0.04))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        try:
            c = ck.load_checkpoint(path)
        except ck.CheckpointError as e:
            print(json.dumps({"failed_at_kill": k, "error": str(e)}))
            sys.exit(1)
        assert float(c["model_state"]["w"][0, 0]) == c["epoch"]
        epochs.append(c["epoch"])
    print(json.dumps({"epochs": epochs}))
"""


@pytest.mark.slow  # kills a child process mid-write: `make test-slow` (CI runs it)
def test_sigkill_during_checkpoint_save_leaves_a_loadable_checkpoint(tmp_path):
    proc = run_python(KILLER, str(tmp_path / "last.pt"), "150", "7")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    epochs = json.loads(proc.stdout.splitlines()[-1])["epochs"]
    assert epochs[-1] > 5, f"the saver hardly ran, so the kills did not land during saves: {epochs}"
    assert epochs == sorted(epochs)


def small_checkpoint(value: float = 1.0, n: int = 16) -> dict:
    import torch

    return {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
            "model_state": {"w": torch.full((n, n), value)}, "classes": ["a", "b"],
            "preprocess": {}, "model_config": {"name": "pipenet-tiny", "num_classes": 2}}


WRITER = """
    import json, os, resource, signal, sys, tempfile
    import torch
    from pipetrace.checkpoint import save_checkpoint
    from pipetrace.files import write_text_atomic

    folder = sys.argv[2]
    big = {"format": "pipetrace-checkpoint", "version": 1, "classes": ["a", "b"],
           "model_state": {"w": torch.zeros(1024, 1024)}, "preprocess": {},
           "model_config": {"name": "pipenet-tiny", "num_classes": 2}}
    with tempfile.TemporaryDirectory() as warm:  # lazy imports happen now, as root
        save_checkpoint(os.path.join(warm, "w.pt"), big)
    if sys.argv[1] == "read-only" and os.geteuid() == 0:  # root ignores permissions
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    if sys.argv[1] == "full-disk":  # the kernel refuses writes past 1 MB, as a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    results = {}
    for name, write in (("last.pt", lambda p: save_checkpoint(p, big)),
                        ("metrics.jsonl", lambda p: write_text_atomic(p, "x" * (2 << 20)))):
        try:
            write(os.path.join(folder, name))
            results[name] = "written"
        except OSError as exc:
            results[name] = [exc.errno, str(exc)]
    print(json.dumps(results))
"""


@pytest.fixture
def shared_tmp():
    """A folder an unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pipetrace-ro-"))
    path.chmod(0o755)
    yield path
    for p in (path, *path.rglob("*")):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(path)


@pytest.mark.parametrize("case", ["read-only", "full-disk"])
def test_failed_writes_are_loud_and_keep_the_previous_files(shared_tmp, case):
    run = shared_tmp / "run"
    run.mkdir()
    ckpt_io.save_checkpoint(run / "last.pt", small_checkpoint(3.0))
    write_text_atomic(run / "metrics.jsonl", '{"epoch": 1}\n')
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    if case == "read-only":
        run.chmod(0o555)
    proc = run_python(WRITER, case, str(run))
    run.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    expected = errno.EACCES if case == "read-only" else errno.EFBIG
    for name, outcome in results.items():
        assert outcome != "written", f"{name} was written in a {case} folder"
        code, message = outcome
        assert code == expected and name in message and "previous file" in message
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # intact, no temp files
    assert float(ckpt_io.load_checkpoint(run / "last.pt")["model_state"]["w"][0, 0]) == 3.0


def test_cli_turns_a_write_failure_into_one_line_and_exit_2(messy_run, monkeypatch, capsys):
    from pipetrace.cli import main

    _, out = messy_run
    before = (out / "report.html").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", disk_full)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device: cannot write" in err
    assert "report.html" in err and (out / "report.html").read_bytes() == before


def test_text_with_names_that_are_not_utf8_is_written_with_replacements(tmp_path):
    name = os.fsdecode(b"caf\xe9.jpg")  # how Python holds a Latin-1 file name
    write_text_atomic(tmp_path / "r.txt", f"skipped {name}\n")
    assert (tmp_path / "r.txt").read_text(encoding="utf-8") == "skipped caf\ufffd.jpg\n"


def test_run_documents_show_non_utf8_names_with_a_replacement(messy_run):
    _, out = messy_run
    doc = json.loads((out / "trace.json").read_text(encoding="utf-8"))
    assert "caf\ufffd" in doc["run"]["classes"]
    assert (out / "report.html").read_text(encoding="utf-8").count("caf\ufffd") >= 1


# -- what a dataset names is escaped ---------------------------------------------------------------

def test_html_report_escapes_names_from_the_dataset(messy_run):
    _, out = messy_run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert HTML_CLASS not in page and "&lt;svg onload=alert(1)&gt;" in page
    doc = json.loads((out / "trace.json").read_text(encoding="utf-8"))
    hostile = '"><img src=x onerror=alert(2)><script>alert(3)</script>'
    doc["run"]["classes"][0] = hostile
    doc["run"]["dataset"]["root"] = hostile
    doc["training"]["bad_files"] = [["x.jpg", hostile]]
    page = render_html(doc)
    assert "<img src=x" not in page and "<script>alert(3)" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
