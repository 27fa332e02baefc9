"""Two grid shards writing to one results store at once lose no record."""
import os
import subprocess
import sys
import time

import pytest

from kdbench.store import ResultsStore


@pytest.mark.slow
def test_two_shards_share_one_store(tmp_path):
    spec = tmp_path / "g.toml"
    spec.write_text('students = ["res18t"]\n[[group]]\nmethods = ["vanilla"]\n')
    env = {**os.environ, "KDBENCH_HOME": str(tmp_path / "home"), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "kdbench.cli", "grid", str(spec), "--profile", "smoke", "--seeds", "0,1,2,3"]
    procs = [subprocess.Popen([*base, "--shard", f"{i}/2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in (1, 2)]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read()[-2000:]
    recs = ResultsStore(tmp_path / "home" / "results.sqlite").query()
    assert sorted(r.seed for r in recs) == [0, 1, 2, 3] and all(r.status == "done" for r in recs)
    teachers = list((tmp_path / "home" / "teachers").iterdir())
    assert len(teachers) == 1  # trained once, shared by both shards
    again = subprocess.run([*base, "--dry-run"], env=env, capture_output=True, text=True)
    assert "4 cells, 4 done, 0 to run" in again.stdout


def test_shards_split_a_grid_evenly_and_disjointly():
    from collections import Counter

    from kdbench.grid import expand, shard

    cells = expand("table3", profile="gpu128", seeds=[0])
    shares = [shard(cells, i, 3) for i in (1, 2, 3)]
    hashes = [c.cfg.hash for share in shares for c in share]
    assert sorted(hashes) == sorted(c.cfg.hash for c in cells)  # disjoint, and they cover the grid
    assert [len(s) for s in shares] == [13, 13, 13]
    for share in shares:  # each student's runs spread over the shards: no shard holds all the Xceptions
        assert max(Counter(c.cfg.student for c in share).values()) <= 5
        assert [c.cfg.hash for c in share] == [c.cfg.hash for c in cells if c in share]  # grid order kept


def _open_store(path, start, results):
    from kdbench.store import StoreError

    while time.time() < start:  # every process opens at the same moment
        pass
    try:
        ResultsStore(path)
        results.put("ok")
    except StoreError as exc:
        results.put(str(exc))


def test_processes_opening_a_new_store_together_all_succeed(tmp_path):
    """Shards started together race to create the store; switching a new file to WAL answers
    "locked" without waiting, which failed about one trial in eight before the store retried."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for trial in range(20):
        results = ctx.Queue()
        start = time.time() + 0.2
        procs = [ctx.Process(target=_open_store, args=(tmp_path / f"{trial}.sqlite", start, results))
                 for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 6
