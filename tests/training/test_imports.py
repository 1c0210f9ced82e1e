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


def test_import_training_loads_nothing_and_the_config_no_circle():
    """``import training`` loads no submodule (its names load on first use); the torch-free schema doesn't import
    the config built on it (no import circle), and the config imports neither the data nor the methods."""
    code = ("import sys, training; assert not [m for m in sys.modules if m.startswith('training.')], sys.modules\n"
            "import training.schema; assert 'training.config' not in sys.modules\n"
            "from training import RunConfig; assert RunConfig.from_dict({}).epochs == 10\n"
            "bad = [m for m in ('torch', 'training.data', 'training.methods', 'training.loop') if m in sys.modules]\n"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
