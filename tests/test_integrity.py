"""What kdbench writes survives a full disk and bit rot: temporary files go, the cause is
named, and every file read back is checked against the digest written with it."""
import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import invoke, launch

from kdbench import io
from kdbench.io import CorruptFileError, NoSpaceError, atomic_save, digest_path, load_verified


def flip_bit(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*tmp*"))


def test_digest_detects_a_flipped_bit_and_a_missing_digest(tmp_path):
    path = tmp_path / "state.pt"
    atomic_save({"w": torch.arange(1000.0)}, path)
    assert torch.equal(load_verified(path)["w"], torch.arange(1000.0))
    flip_bit(path)  # inside the tensor data: torch.load alone would read different numbers
    with pytest.raises(CorruptFileError, match="does not match the digest written with it"):
        load_verified(path)
    atomic_save({"w": torch.zeros(3)}, path)
    digest_path(path).unlink()
    with pytest.raises(CorruptFileError, match="has no digest file"):
        load_verified(path)
    assert load_verified(path, required=False)["w"].shape == (3,)


def test_replacing_a_file_keeps_it_verifiable_at_every_step(tmp_path, monkeypatch):
    """A crash between writing the digests and renaming leaves the old file, which must still verify."""
    path = tmp_path / "state.pt"
    atomic_save({"epoch": 0}, path)
    real_replace = os.replace

    def crash(src, dst):
        if Path(dst) == path:
            raise KeyboardInterrupt  # as if killed here
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 1}, path)
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert load_verified(path) == {"epoch": 0} and leftovers(tmp_path) == []


def test_enospc_removes_the_temporary_file_and_names_the_file(tmp_path, monkeypatch):
    """Simulated full disk (any machine): the temporary file goes and the message names the cause."""
    real_save = torch.save

    def fill_up(obj, fh):
        real_save(obj, fh)  # something is written first, as on a real disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.torch, "save", fill_up)
    path = tmp_path / "runs" / "state.pt"
    with pytest.raises(NoSpaceError) as info:
        atomic_save({"w": torch.zeros(100)}, path)
    assert str(info.value) == f"no space left on device writing {path}"
    assert leftovers(tmp_path) == [] and not path.exists() and not digest_path(path).exists()


def mount_tmpfs(mnt: Path, size: str):
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only: skipped where mounting is not permitted)."""
    yield from mount_tmpfs(tmp_path / "disk", "2m")


@pytest.mark.slow
def test_a_run_on_a_disk_that_fills_up(tmp_path):
    """The issue's case: a 20 MB workdir holds the smoke teacher and its features, not the first
    epoch's checkpoint. One line naming the cause, no temporary file, a failed record, a readable store."""

    for disk in mount_tmpfs(tmp_path / "disk", "20m"):
        proc = launch("run", "--method", "vanilla", "--profile", "smoke", "--no-progress", home=disk)
        assert proc.returncode == 1, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: no space left on device writing ") and "Traceback" not in proc.stderr, last
        assert leftovers(disk) == []
        listing = launch("results", "--format", "csv", home=disk)
        assert listing.returncode == 0, listing.stderr
        assert ",failed," in listing.stdout and "no space left on device writing" in listing.stdout


def test_a_real_full_disk(small_disk):
    path = small_disk / "state.pt"
    atomic_save({"w": torch.zeros(1000)}, path)
    with pytest.raises(NoSpaceError, match=f"no space left on device writing {path}"):
        atomic_save({"w": torch.zeros(1 << 20)}, path)  # 4 MiB on a 2 MiB disk
    assert leftovers(small_disk) == []
    assert torch.equal(load_verified(path)["w"], torch.zeros(1000))  # the old file is intact


def test_a_run_failing_on_a_full_disk_is_recorded_with_its_cause(tmp_path, monkeypatch):
    """The cause stays the error even when the store cannot take the failed record either."""
    from kdbench.config import resolve
    from kdbench.store import ResultsStore, StoreError
    from kdbench.train import runner
    from kdbench.train.runtime import make_runtime

    def full(*args, **kwargs):
        raise NoSpaceError(errno.ENOSPC, "No space left on device", str(tmp_path / "teacher.pt"))

    monkeypatch.setattr(runner.TeacherCache, "get", full)
    cfg, ws, rt = resolve(method="vanilla", profile="smoke"), runner.Workspace(tmp_path), make_runtime("cpu")
    store = ResultsStore(ws.store_path)
    with pytest.raises(NoSpaceError):
        runner.run(cfg, ws, store, rt, log=lambda m: None, progress=False)
    (rec,) = store.query()
    assert rec.status == "failed" and rec.error.endswith(f"no space left on device writing {tmp_path / 'teacher.pt'}")

    real_put, logs = store.put, []

    def store_full_too(rec):
        if rec.status == "failed":
            raise StoreError("cannot write results store: database or disk is full")
        real_put(rec)

    monkeypatch.setattr(store, "put", store_full_too)
    with pytest.raises(NoSpaceError):  # not the StoreError raised while recording the failure
        runner.run(cfg, ws, store, rt, log=logs.append, progress=False)
    assert any("record could not be stored" in m for m in logs)


def test_reading_the_store_on_a_full_disk(small_disk):
    """`kdbench results` opens the store read-only: it works when SQLite cannot create its -shm."""
    from kdbench.store import ResultsStore, RunRecord

    store = ResultsStore(small_disk / "results.sqlite")
    store.put(RunRecord(hash="h1", cell="c1", method="vanilla", mode="rgb", student="res18t", dataset="synthetic",
                        test_dataset="synthetic", profile="smoke", seed=0, spec="", status="done", config={}))
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # fill the disk to the last block
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    result = invoke("results", "--format", "csv", "--workdir", small_disk)
    assert result.exit_code == 0, result.output
    assert "h1,vanilla,rgb" in result.stdout


def test_the_prepared_frame_cache_is_rebuilt_when_its_bits_flip(tmp_path):
    import numpy as np
    from PIL import Image

    from kdbench.data.prepared import cached_images

    rng = np.random.default_rng(0)
    names = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        names.append(f"{i}.png")
    first = np.array(cached_images(tmp_path, names, 32, "k"))
    (cache,) = (tmp_path / "cache").glob("frames-*.npy")
    flip_bit(cache, -7)  # one pixel of the last frame: the array still loads, with another value
    logs = []
    again = np.array(cached_images(tmp_path, names, 32, "k", log=logs.append))
    assert np.array_equal(first, again) and any("not matching its digest" in m for m in logs)


def test_a_killed_runs_record_reads_as_interrupted(tmp_path):
    import sys

    from kdbench.store import ResultsStore, RunRecord, this_process

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store = ResultsStore(tmp_path / "results.sqlite")
    for name, proc in (("alive", this_process()), ("killed", {**this_process(), "pid": gone.pid}),
                       ("elsewhere", {"pid": gone.pid, "host": "another-host"})):
        store.put(RunRecord(hash=name, cell=name, method="vanilla", mode="rgb", student="res18t", dataset="synthetic",
                            test_dataset="synthetic", profile="smoke", seed=0, spec="", status="running", config={},
                            history={"process": proc}))
    assert {r.hash: r.status for r in store.query()} == {"alive": "running", "killed": "interrupted",
                                                        "elsewhere": "running"}


@pytest.mark.slow
def test_the_same_run_twice_at_once_waits_and_reuses_the_record(tmp_path):
    """A second identical `kdbench run` waits for the first (here: a held lock), then takes its
    record instead of training again."""
    import sys

    from kdbench.config import resolve
    from kdbench.io import locked
    from kdbench.store import ResultsStore, RunRecord

    cfg = resolve(method="vanilla", profile="smoke")
    env = {**os.environ, "KDBENCH_HOME": str(tmp_path), "COLUMNS": "200"}
    with locked(tmp_path / "runs" / cfg.hash):  # the first run, still training
        second = subprocess.Popen([sys.executable, "-m", "kdbench.cli", "run", "--method", "vanilla", "--profile",
                                   "smoke", "--no-progress"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        first_line = second.stderr.readline()
        assert "is running in another process; waiting for it" in first_line, first_line
        ResultsStore(tmp_path / "results.sqlite").put(RunRecord(
            hash=cfg.hash, cell=cfg.cell, method="vanilla", mode="rgb", student="res18t", dataset="synthetic",
            test_dataset="synthetic", profile="smoke", seed=0, spec="", status="done", config=cfg.to_dict(),
            metrics={"test": {"acc": 61.0, "auc": 62.0}, "best_epoch": 0}, wall_time=1.0))
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "already done" in err and "teacher" not in err and "61.00" in out
