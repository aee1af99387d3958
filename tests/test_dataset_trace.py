"""Any user's dataset is traced as its own __getitem__ runs it: one record per real transform
object (torchvision v1, v2, albumentations), shapes and ranges equal to what the dataset
returns; a planted BGR swap in a user's dataset is found, real data raises no false alarm."""

import os
import textwrap

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision import transforms as v1
from torchvision.transforms import v2

from conftest import run_cli
from pipetrace.checks import channel_reference, inspect_batch
from pipetrace.dataset_trace import trace_dataset
from pipetrace.transforms import Preprocess

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def returned_image(ds, i):
    item = ds[i]
    return item[0] if isinstance(item, tuple) else item


def assert_last_record_is_what_the_dataset_returns(trace, ds, index):
    img = returned_image(ds, index)
    last = [s for s in trace.flow.stages if s.scope == "image"][-1].output
    assert last.shape == tuple(img.shape)
    assert last.min == pytest.approx(float(img.min()), abs=1e-6)
    assert last.max == pytest.approx(float(img.max()), abs=1e-6)


def test_imagefolder_with_a_v1_chain(photos):
    chain = v1.Compose([v1.Resize(64), v1.CenterCrop(56), v1.ToTensor(), v1.Normalize(MEAN, STD)])
    ds = datasets.ImageFolder(photos, transform=chain)
    trace = trace_dataset(ds, index=5)
    names = [s.name for s in trace.flow.stages]
    assert names == ["Load image (dataset.loader)", "Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert [s.operation for s in trace.flow.stages[1:]] == [repr(t) for t in chain.transforms]
    assert trace.flow.source == ds.samples[5][0]
    assert trace.flow.stages[0].output.channel_order == "RGB"  # PIL's loader, measured
    assert trace.flow.stages[0].input.short() == f"file, {os.path.getsize(ds.samples[5][0]):,} bytes"
    assert_last_record_is_what_the_dataset_returns(trace, ds, 5)
    assert chain.transforms[0].__class__ is v1.Resize  # the originals are back in place
    assert trace.findings == []


def test_imagefolder_with_a_v2_chain_and_its_loader(photos):
    chain = v2.Compose([v2.Resize(64), v2.CenterCrop(56), v2.ToImage(),
                        v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    ds = datasets.ImageFolder(photos, transform=chain)
    trace = trace_dataset(DataLoader(ds, batch_size=6, shuffle=False))
    names = [s.name for s in trace.flow.stages]
    assert names[1:6] == ["Resize", "CenterCrop", "ToImage", "ToDtype", "Normalize"]
    assert names[-1] == "Collate (default_collate)" and trace.flow.stages[-1].scope == "batch"
    assert trace.flow.model_input().shape == (6, 3, 56, 56)
    assert_last_record_is_what_the_dataset_returns(trace, ds, 0)
    assert trace.preprocess.mean == tuple(MEAN)  # read from the chain's Normalize
    assert trace.findings == []


class AlbumentationsPhotos(Dataset):
    """A user's dataset as albumentations' docs write it: cv2.imread, then transform(image=)."""

    def __init__(self, files, transform, *, convert=True):
        self.files, self.transform, self.convert = files, transform, convert

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = cv2.imread(self.files[i])
        if self.convert:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return self.transform(image=img)["image"], 0


def albumentations_chain():
    A = pytest.importorskip("albumentations")
    from albumentations.pytorch import ToTensorV2

    return A.Compose([A.SmallestMaxSize(max_size=64), A.CenterCrop(56, 56), A.Normalize(),
                      ToTensorV2()])


def test_an_albumentations_chain(photos):
    chain = albumentations_chain()
    files = sorted(str(p) for p in photos.rglob("*.jpg"))[:20]
    ds = AlbumentationsPhotos(files, chain)
    trace = trace_dataset(ds, index=3)
    assert [s.name for s in trace.flow.stages] == [type(t).__name__ for t in chain.transforms]
    assert [s.library for s in trace.flow.stages] == ["albumentations"] * 4
    assert trace.flow.stages[0].input.channel_order == "RGB"  # measured on what it was given
    assert_last_record_is_what_the_dataset_returns(trace, ds, 3)
    assert trace.findings == []


def test_a_planted_bgr_swap_in_a_users_dataset_is_found(photos):
    chain = albumentations_chain()
    files = sorted(str(p) for p in photos.rglob("*.jpg"))[:20]
    trace = trace_dataset(AlbumentationsPhotos(files, chain, convert=False), index=3)
    (f,) = trace.findings
    assert f.check == "channel-order" and f.severity == "error"
    assert files[3] in f.evidence  # it says which input it compared with


class CifarFiles(Dataset):
    """A plain user dataset of real files: cv2 decode, own tensor conversion (no .transform
    Compose: a plain callable)."""

    def __init__(self, files, *, convert=True):
        self.files, self.convert = files, convert
        self.transform = self.to_tensor

    def to_tensor(self, bgr):
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if self.convert else bgr
        x = torch.from_numpy(img).permute(2, 0, 1).float() / 255
        return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.transform(cv2.imread(self.files[i])), 0


def test_real_cifar_files_no_false_alarm_and_the_swap_found(cifar):
    files = sorted(str(p) for p in (cifar / "test").rglob("*.jpg"))[::50][:120]
    for convert, expected in ((True, []), (False, ["channel-order"])):
        ds = CifarFiles(files, convert=convert)
        trace = trace_dataset(DataLoader(ds, batch_size=64), index=7)
        assert [f.check for f in trace.findings] == expected, [f.evidence for f in trace.findings]
        assert [s.name for s in trace.flow.stages] == ["to_tensor", "Collate (default_collate)"]


def test_the_batch_colour_check_with_a_reference_of_real_files(cifar, photos):
    """inspect_batch without a reference cannot see a swap; with the dataset's colours it does
    (shuffled batches of 64, as training draws them), and real batches raise nothing."""
    import random

    for files in (sorted(str(p) for p in (cifar / "train").rglob("*.jpg"))[::50],
                  sorted(str(p) for p in photos.rglob("*.jpg"))):
        random.Random(0).shuffle(files)
        ref = channel_reference(files)
        pre = Preprocess()
        for start in range(0, 192, 64):
            chunk = files[start:start + 64]
            right, wrong = (torch.stack([CifarFiles(chunk, convert=c).to_tensor(
                cv2.resize(cv2.imread(f), (32, 32))) for f in chunk]) for c in (True, False))
            assert inspect_batch(right, pre, reference=ref) == []
            assert inspect_batch(wrong, pre) == []  # no reference: nothing to compare with
            (f,) = inspect_batch(wrong, pre, reference=ref)  # BGR pixels, RGB statistics
            assert f.check == "channel-order" and "PIL decode" in f.evidence


def test_trace_dataset_refuses_what_it_cannot_see():
    class Opaque(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(3, 4, 4)

    with pytest.raises(ValueError, match="no 'transform' attribute"):
        trace_dataset(Opaque())
    with pytest.raises(ValueError, match="out of range"):
        trace_dataset(CifarFiles(["x.jpg"]), index=3)


def test_cli_traces_a_dataset_factory_and_writes_the_report(photos, tmp_path):
    factory = tmp_path / "my_data.py"
    factory.write_text(textwrap.dedent(f"""
        from torchvision import datasets, transforms
        def make():
            return datasets.ImageFolder({str(photos)!r}, transform=transforms.Compose([
                transforms.Resize(48), transforms.CenterCrop(40), transforms.ToTensor()]))
    """))
    out = tmp_path / "traced"
    proc = run_cli("trace", "--dataset", f"{factory}:make", "--index", "2", "--out", str(out))
    assert proc.returncode == 1, proc.stderr  # a finding (error): Normalize is missing
    assert "ToTensor" in proc.stdout and "Normalize was skipped" in proc.stdout
    page = (out / "report.html").read_text()
    assert "ToTensor" in page and "Training trace" not in page
    again = run_cli("report", str(out))
    assert again.returncode == 0 and (out / "report.html").read_text() == page
    bad = run_cli("trace", "--dataset", f"{factory}:nope")
    assert bad.returncode == 2 and "has no function 'nope'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_readme_snippet_runs_as_printed(photos, tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = re.findall(r"```python\n(# Trace your own dataset.*?)```", readme, re.S)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_photos").symlink_to(photos)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trace = namespace["trace"]
    assert [s.name for s in trace.flow.stages][1:] == ["Resize", "CenterCrop", "ToImage",
                                                       "ToDtype", "Normalize",
                                                       "Collate (default_collate)"]
    assert np.isfinite([s.micros_per_item for s in trace.flow.stages]).all()
