"""A new user's path (issue 15): each README step with the real ``orch`` commands, on the real sweep files, twice.

- ``--set`` on a key an axis sweeps is refused with the way to change the axis; a bad value gets its own message;
- ``orch sweep FILE`` on a sweep that already ran shows its results (exit 0), and ``--dry-run`` works there and
  writes nothing;
- data that cannot be loaded is refused before Ray starts (exit 2, the full message), and an error a retry would
  repeat (a corrupt CIFAR batch) fails the trial once, printed whole;
- ``orch ui`` never prints addresses of a port another program holds;
- ``orch train`` never overwrites a run;
- the paper path: a ``paper``-profile trial of ``sweeps/k_interval.yaml`` on files in the exact
  ``cifar-10-batches-py`` layout, through ``orch sweep``, end to end.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from orchestrator.results import read_rows

REPO = Path(__file__).resolve().parents[2]
K_INTERVAL = REPO / "sweeps" / "k_interval.yaml"


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


def write_cifar10(root: Path, per_batch: int = 16, n_test: int = 16, corrupt: str | None = None) -> Path:
    """``root/cifar-10-batches-py`` as the CIFAR site ships it (the "python version"): five pickled training
    batches and a test batch, dicts with b'data' (uint8, N x 3072, channel-major) and b'labels', and
    ``batches.meta``. Images are a class colour plus noise, so they are learnable. ``corrupt``: a file written
    as garbage instead."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(10, 3))

    def batch(n: int, label: bytes) -> dict[bytes, object]:
        y = rng.integers(0, 10, size=n)
        img = np.clip(colours[y][:, :, None] + rng.normal(0, 40, size=(n, 3, 1024)), 0, 255).astype(np.uint8)
        return {b"batch_label": label, b"labels": [int(v) for v in y], b"data": img.reshape(n, 3072),
                b"filenames": [f"img_{i}.png".encode() for i in range(n)]}

    files = {f"data_batch_{i}": batch(per_batch, f"training batch {i} of 5".encode()) for i in range(1, 6)}
    files["test_batch"] = batch(n_test, b"testing batch 1 of 1")
    files["batches.meta"] = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                                              b"horse", b"ship", b"truck"], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    for name, obj in files.items():
        with open(folder / name, "wb") as f:
            if name == corrupt:
                f.write(b"not a pickle" * 10)
            else:
                pickle.dump(obj, f, protocol=2)
    return folder


# ------------------------------------------------------------------------------------------ 1. --set under an axis


def test_set_on_a_swept_key_is_refused_with_the_way_to_change_the_axis(cli, tmp_path) -> None:
    assert cli("validate", K_INTERVAL, "--set", "base.method.k=5").exit_code == 2  # (it was accepted, with no effect)
    res = cli("sweep", K_INTERVAL, "--set", "base.method.k=5", "--data-dir", tmp_path / "d")
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "--set base.method.k=5" in out and "'method.k' is an axis of this sweep" in out and "no effect" in out
    assert "--set 'axes.method.k=[5]'" in out and f"{K_INTERVAL}:" in out
    # a bad value is told what is wrong with it (not silently overridden by the axis)
    res = cli("validate", K_INTERVAL, "--set", "base.method.k=abc")
    assert res.exit_code == 2 and "base.method.k: must be an integer (got 'abc')" in " ".join(res.output.split()), res.output
    # a whole section that holds the swept key, too; a key next to the axis is fine
    res = cli("validate", K_INTERVAL, "--set", "base.method={name: fgsm_sdi, k: 3}")
    assert res.exit_code == 2 and "'method.k' is an axis" in res.output
    res = cli("validate", K_INTERVAL, "--set", "base.method.gen_width=8", "--set", "axes.method.k=[5]")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "d").exists()
    assert "set the axis instead" in " ".join(cli("sweep", "--help").output.replace("│", " ").split())


def test_two_typos_are_both_reported(cli, tmp_path) -> None:
    f = tmp_path / "typos.yaml"
    f.write_text("name: typos\nbase:\n  epoch: 2\n  optim: {lrr: 0.1}\n  method: {name: fgsm_sdi}\naxes:\n  method.k: [1, 2]\n")
    res = cli("validate", f)
    assert res.exit_code == 2 and "2 problems" in res.output, res.output
    assert f"{f}:3: base.epoch: unknown key" in res.output and f"{f}:4: base.optim.lrr: unknown key" in res.output
    # a typo in the sweep's own keys and one in the run config: both
    f.write_text("name: typos\nmetirc: best/clean\nbase:\n  epoch: 2\n")
    res = cli("validate", f)
    assert res.exit_code == 2 and "metirc: unknown key" in res.output and "base.epoch: unknown key" in res.output, res.output


def test_help_has_no_bool_type_and_dry_run_says_1_seed(cli, tmp_path) -> None:
    for cmd in ("sweep", "validate", "report", "train", "ui"):
        out = cli(cmd, "--help").output
        assert "<bool>" not in out and "--help" in out, (cmd, out)
    res = cli("sweep", K_INTERVAL, "--profile", "none", "--dry-run", "--no-probe", "--data-dir", tmp_path)
    assert res.exit_code == 0, res.output
    assert "6 trials = 6 configs x 1 seed [0]" in res.output, res.output


# ------------------------------------------------------------------------------------------ 2. a sweep that already ran


@pytest.mark.slow
def test_a_finished_sweep_is_shown_again_and_its_dry_run_writes_nothing(grid_sweep, cli) -> None:
    """`make demo` twice, and the README's next step (`--dry-run`) after it."""
    import mlflow

    assert grid_sweep["result"].exit_code == 0, grid_sweep["result"].output
    f, data, sdir = grid_sweep["file"], grid_sweep["data"], grid_sweep["dir"]
    before = _snapshot(sdir)
    res = cli("sweep", f, "--data-dir", data, "--dry-run", "--no-probe")
    assert res.exit_code == 0, res.output
    assert "k=40,seed=1" in res.output and "already ran to its end" in res.output
    res = cli("sweep", f, "--data-dir", data)  # run it again: its results, where they are, how to start afresh
    assert res.exit_code == 0, res.output
    out = res.output
    for s in ("k=1", "k=40", "where everything is", "results.parquet", "this sweep already ran (4 finished)", f"remove {sdir}"):
        assert s in out, (s, out)
    assert "start  " not in out  # no trial ran
    assert _snapshot(sdir) == before  # neither command wrote anything
    mlflow.set_tracking_uri(f"sqlite:///{sdir}/mlflow.db")
    parents = [r for r in mlflow.search_runs(experiment_names=["grid"], output_format="list") if r.data.tags.get("orch.role") == "sweep"]
    assert len(parents) == 1, [p.info.run_id for p in parents]  # one sweep, one parent run
    # the browse hint is a command that runs without an activated environment
    m = re.search(r"browse\s+(\S+) ui ", out)
    assert m, out
    exe = m.group(1)
    assert (exe == "orch" and shutil.which("orch")) or os.access(exe, os.X_OK), exe
    # a changed sweep in that folder is still refused, with the reason
    res = cli("sweep", f, "--data-dir", data, "--set", "base.epochs=2")
    assert res.exit_code == 2 and "already holds this sweep" in res.output


def test_dry_run_of_a_partly_run_sweep_says_so_and_writes_nothing(cli, tmp_path) -> None:
    import json

    from orchestrator.spec import load_spec

    spec = load_spec(K_INTERVAL)
    sdir = tmp_path / "sweeps" / spec.name
    sdir.mkdir(parents=True)
    (sdir / "sweep.json").write_text(json.dumps({"digest": spec.digest, "name": spec.name}))
    before = _snapshot(sdir)
    res = cli("sweep", K_INTERVAL, "--dry-run", "--no-probe", "--data-dir", tmp_path)
    assert res.exit_code == 0, res.output
    assert "holds this sweep, not finished: --resume continues it" in res.output and "k=40,seed=1" in res.output
    assert _snapshot(sdir) == before
    res = cli("sweep", K_INTERVAL, "--dry-run", "--no-probe", "--data-dir", tmp_path, "--set", "seeds=1")
    assert res.exit_code == 0 and "holds another version of this sweep" in res.output, res.output


# ------------------------------------------------------------------------------------------ 5. data


def test_missing_data_is_refused_before_ray_with_the_full_message(cli, tmp_path, monkeypatch) -> None:
    empty = tmp_path / "nodata"
    # a subprocess with a time limit: a sweep that starts instead of being refused fails here, not after 36 retries
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(K_INTERVAL), "--set", "base.data.name=cifar10",
                           "--set", f"base.data.root={empty}", "--set", "base.data.download=false", "--data-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "--set base.data.name=cifar10: base.data.name:" in out
    assert f"no data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta in {empty}/cifar-10-batches-py" in out
    assert f"Put cifar-10-python.tar.gz or cifar-10-batches-py/ into {empty}" in out and "data.download: true fetches them" in out
    assert not (tmp_path / "d").exists() and "Ray" not in out
    # with data.download already true (the default), the hint is not to set it: the download was tried and failed.
    # A proxy that refuses connections stands for "no network" on any machine.
    for var in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    res = cli("sweep", K_INTERVAL, "--set", "base.data.name=cifar10", "--set", f"base.data.root={empty}", "--data-dir", tmp_path / "d")
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "data.download is true, and the download failed (URLError" in out, res.output
    assert "fetches them" not in out and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_an_error_a_retry_would_repeat_fails_the_trial_once_and_is_printed_whole(ray_session, write_sweep, cli, tmp_path) -> None:
    write_cifar10(tmp_path / "cifar", corrupt="data_batch_3")
    f = write_sweep("corrupt", base={"data": {"name": "cifar10", "root": str(tmp_path / "cifar"), "download": False, "val_size": 16}},
                    max_failures=2)
    res = cli("sweep", f, "--data-dir", tmp_path / "d")
    assert res.exit_code == 1, res.output
    rows, _ = read_rows(tmp_path / "d" / "sweeps" / "corrupt" / "results.parquet")
    assert len(rows) == 1 and rows[0]["status"] == "failed" and rows[0]["attempts"] == 1, rows
    assert not re.search(r"\] retry ", res.output) and "attempt 2" not in res.output
    # the message in the live output, whole, up to its fix
    assert re.search(r"\n\s+DatasetUnavailable: data.name='cifar10': \S+data_batch_3 is not a CIFAR python batch \(.*\); "
                     r"replace it with the file from https://www.cs.toronto.edu/~kriz/cifar.html\n", res.output), res.output


# ------------------------------------------------------------------------------------------ 6. orch ui's port


def test_orch_ui_refuses_a_port_another_program_holds(cli, tmp_path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mlflow.db").write_bytes(b"")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        res = cli("ui", tmp_path / "s", "--port", port)
    assert res.exit_code == 2, res.output
    assert f"cannot serve on 127.0.0.1:{port}" in res.output and "in use" in res.output and "--port" in res.output
    assert "http://" not in res.output  # no address of the other program


@pytest.mark.slow
def test_orch_ui_without_a_port_takes_a_free_one(grid_sweep, mlflow_servers) -> None:
    import urllib.request

    from orchestrator.ui import UI_DEFAULT_PORT

    held = socket.socket()
    try:
        held.bind(("127.0.0.1", UI_DEFAULT_PORT))
        held.listen(1)
    except OSError:
        pass  # already taken by another program: the same case
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no activated environment
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", str(grid_sweep["dir"])], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("MLflow UI on"):
                break
        out = "".join(lines)
        m = re.search(r"MLflow UI on http://127.0.0.1:(\d+) ", out)
        assert m and int(m.group(1)) != UI_DEFAULT_PORT, out
        assert f"port {UI_DEFAULT_PORT} on 127.0.0.1 is taken by another program: using {m.group(1)}" in out
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "orch ui did not answer on the port it printed"
                time.sleep(1)
    finally:
        mlflow_servers.stop(proc)
        held.close()
    rest = proc.stdout.read()
    assert "DeprecationWarning" not in rest, rest


# ------------------------------------------------------------------------------------------ 7. orch train


def test_orch_train_never_overwrites_a_run(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ("train", "--set", "data.name=digits", "--set", "epochs=1", "--set", "model.width=8", "--set", "data.val_size=100",
            "--set", "eval.attacks=[clean]", "--set", "eval.subset=50", "--set", "eval.epoch_pgd_steps=1")
    assert cli(*args).exit_code == 0
    time.sleep(1.1)
    res = cli(*args)
    assert res.exit_code == 0, res.output
    runs = sorted(p for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(re.fullmatch(r"run-\d{8}-\d{6}(-\d+)?", p.name) and (p / "results.json").exists() for p in runs), runs
    res = cli(*args, "--out-dir", runs[0])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "already holds a run" in out and "--resume" in out and "--out-dir" in out
    res = cli(*args, "--resume")
    assert res.exit_code == 2 and "--out-dir" in res.output and runs[-1].name in res.output, res.output
    assert "runs are never overwritten" in " ".join(cli("train", "--help").output.replace("│", " ").split())


# ------------------------------------------------------------------------------------------ the paper path


@pytest.mark.slow
def test_paper_profile_trial_on_files_in_the_cifar10_python_layout(ray_session, cli, tmp_path) -> None:
    """`sweeps/k_interval.yaml --profile paper` (CIFAR-10, ResNet-18, augmentation, the thesis's schedule), cut
    down with --set to one k, one epoch, a few images and two attacks on CPU, through `orch sweep`."""
    root = tmp_path / "data"
    write_cifar10(root)
    sets = ["axes.method.k=[20]", f"base.data.root={root}", "base.data.download=false", "base.data.val_size=16",
            "base.epochs=1", "base.batch_size=16", "base.device=cpu", "resources.cpu=1", "resources.gpu=0",
            "base.eval.attacks=[clean,pgd10]", "base.eval.subset=8", "base.eval.train_batch_size=16", "base.eval.epoch_pgd_steps=2"]
    res = cli("sweep", K_INTERVAL, "--profile", "paper", *[x for s in sets for x in ("--set", s)], "--data-dir", tmp_path / "d")
    assert res.exit_code == 0, res.output
    sdir = tmp_path / "d" / "sweeps" / "k_interval-paper"
    rows, meta = read_rows(sdir / "results.parquet")
    assert len(rows) == 1 and meta["orch.profile"] == "paper"
    r = rows[0]
    assert r["status"] == "finished" and r["attempts"] == 1, r
    assert r["config.data.name"] == "cifar10" and r["config.model.name"] == "resnet18" and r["config.method.k"] == 20
    assert r["config.data.augment"] is True and r["n_test"] == 8
    for k in ("best/clean", "best/pgd10_eps8", "last/clean", "last/pgd10_eps8"):
        assert 0.0 <= r[k] <= 1.0, (k, r)
    assert "best/pgd10_eps8" in res.output or "k=20" in res.output


# ------------------------------------------------------------------------------------------ 9. make's pip step


def test_make_shows_progress_while_pip_installs(tmp_path) -> None:
    """The Makefile pipes pip through tools/pip_progress.py: a line per package, a line whenever pip is silent for
    a while (here 1 s), errors whole, and pip's exit status kept."""
    dry = subprocess.run(["make", "-n", "venv", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True)
    pip_lines = [x for x in dry.stdout.splitlines() if " -m pip install " in x]
    assert len(pip_lines) == 2 and all("pipefail" in x and x.endswith("| python3 tools/pip_progress.py") for x in pip_lines), dry.stdout
    fake_pip = ("import sys, time\n"
                "for p in ('torch==2.14.1', 'ray==2.60.0'): print('Collecting ' + p, flush=True)\n"
                "print('  Downloading torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl (900.1 MB)', flush=True)\n"
                "print('Installing collected packages: torch, ray', flush=True)\n"
                "time.sleep(3.5)\n"
                "print('Successfully installed ray-2.60.0 torch-2.14.1', flush=True)\n"
                "print('ERROR: a failure', flush=True)\n"
                "sys.exit(3)\n")
    t0 = time.time()
    proc = subprocess.Popen(["bash", "-c", f"set -o pipefail; {sys.executable} -c \"$FAKE\" 2>&1 | python3 tools/pip_progress.py --every 1"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "FAKE": fake_pip})
    seen = [(time.time() - t0, line.rstrip("\n")) for line in proc.stdout]
    assert proc.wait() == 3  # pip's exit status, through the pipe
    text = "\n".join(x for _, x in seen)
    for s in ("collecting 1: torch==2.14.1", "collecting 2: ray==2.60.0", "Downloading torch-2.14.1", "installing 2 packages",
              "still working: installing 2 packages", "installed 2 packages", "ERROR: a failure"):
        assert s in text, (s, text)
    working = [t for t, x in seen if "still working" in x]
    done = next(t for t, x in seen if "installed 2 packages" in x and "installing" not in x)
    # printed during the silence, not after it (the last one may fall just before pip speaks again)
    assert len([t for t in working if t < done - 0.5]) >= 2, (working, done)


def test_study_reports_cite_nothing_in_a_temporary_folder() -> None:
    """A reader has the repository, not the machine a demo ran on: no report points into /tmp."""
    bad = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "docs" / "studies").rglob("*.md"))
           for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"(^|[\s`(])/tmp/", line)]
    assert not bad, bad
