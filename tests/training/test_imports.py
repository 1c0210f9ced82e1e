import subprocess
import sys


def test_import_training_pulls_in_neither_ray_nor_mlflow():
    code = "import sys, training, training.attacks, training.methods, training.models; " \
           "bad = [m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules]; print(bad); assert not bad"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_works_without_cuda():
    code = "import torch, training; from training.loop import resolve_device; assert resolve_device('cpu').type == 'cpu'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stderr
