"""``cluster.yaml`` is checked offline against Ray's own autoscaler schema (``ray/autoscaler/ray-schema.json`` and
``validate_config``'s extra checks, after ``prepare_config`` fills the AWS defaults as ``ray up`` does), and the
validator is shown to catch mistakes on modified copies. No cloud access, no credentials."""
from __future__ import annotations

import copy
import re
import subprocess
import sys

import jsonschema
import pytest
import yaml

from orchestrator.cluster import load_cluster_yaml, validate_cluster_config

from cluster_helpers import REPO

CLUSTER_YAML = REPO / "cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_cluster_yaml(CLUSTER_YAML)


@pytest.fixture()
def cfg(raw) -> dict:
    return copy.deepcopy(raw)


def _commands(c: dict, key: str) -> str:
    return "\n".join(c.get(key) or [])


# ------------------------------------------------------------------ the file as shipped


def test_cluster_yaml_passes_rays_schema(raw):
    prepared = validate_cluster_config(raw)
    assert prepared["head_node_type"] == "head"
    assert prepared["provider"]["type"] == "aws"


def test_head_runs_no_trials_and_workers_scale_from_zero(raw):
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_types = {k: t for k, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    gpus = sorted(t["resources"]["GPU"] for t in gpu_types.values())
    assert gpus == [1, 8], f"expected a one-GPU and an eight-GPU worker type, got {gpus}"
    for name, t in gpu_types.items():
        assert t["min_workers"] == 0, name
        assert t["max_workers"] >= 1, name
    assert sum(t["max_workers"] for t in gpu_types.values()) <= raw["max_workers"]
    assert raw["idle_timeout_minutes"] > 0


def test_setup_installs_this_project_at_a_pinned_version(raw):
    setup = _commands(raw, "setup_commands")
    m = re.search(r"ORCH_REF=(\S+)", setup)
    assert m and m.group(1) not in ("", "main", "master", "HEAD"), "setup must pin a tag of this project"
    assert '--branch "$ORCH_REF"' in setup
    assert "requirements.txt" in setup  # the pinned torch / Ray / MLflow / Optuna of that tag
    assert "ray[default]==2.60.0" in setup  # the dashboard + job server, same Ray as the project
    assert "RAY_AUTH_MODE=token" in setup
    assert "ORCH_DATA_DIR=/mnt/orch" in setup and "mount -t nfs4" in setup  # shared storage on every node
    assert raw["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_head_starts_a_lean_mlflow_server_every_node_reaches(raw):
    start = _commands(raw, "head_start_ray_commands")
    assert "mlflow server" in start
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in start and "--workers 1" in start  # stack.md Q3
    assert re.search(r"--backend-store-uri (sqlite:////|postgresql://)", start), "a SQL backend store"
    assert "--serve-artifacts" in start and "--artifacts-destination s3://" in start
    host = re.search(r"mlflow server .*--host (\S+)", start).group(1)
    assert "127.0.0.1" not in host and "localhost" not in host, "must be reachable from the other nodes"
    assert "MLFLOW_TRACKING_URI=http://$(hostname -I" in _commands(raw, "head_setup_commands")  # the private IP
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start


def test_the_cluster_test_sweep_files_are_valid_sweeps():
    from orchestrator.spec import load_spec

    for f in ("tiny_gpu.yaml", "gpu_share.yaml"):
        spec = load_spec(REPO / "tests" / "cluster" / "sweeps" / f)
        assert spec.resources.gpu == 1 and spec.num_trials in (2, 4), f
    spec = load_spec(REPO / "tests" / "cluster" / "sweeps" / "gpu_share.yaml", sets=["resources.gpu=0.25", "max_concurrent_trials=4"])
    assert spec.resources.gpu == 0.25 and spec.max_concurrent_trials == 4


def test_cli_validates_the_file():
    r = subprocess.run([sys.executable, "-m", "orchestrator", "cluster", "validate", str(CLUSTER_YAML)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ok: " in r.stdout and "gpu_1x" in r.stdout


# ------------------------------------------------------------------ the validator catches mistakes (modified copies)


def test_typo_in_a_node_type_key_is_refused(cfg):
    t = cfg["available_node_types"]["gpu_1x"]
    t["min_worker"] = t.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="'min_worker' was unexpected"):
        validate_cluster_config(cfg)


def test_typo_in_a_top_level_key_is_refused(cfg):
    cfg["idle_timeout_minute"] = cfg.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="'idle_timeout_minute' was unexpected"):
        validate_cluster_config(cfg)


def test_wrong_type_is_refused(cfg):
    cfg["idle_timeout_minutes"] = "five"
    with pytest.raises(jsonschema.ValidationError, match="'five' is not of type 'number'"):
        validate_cluster_config(cfg)


def test_fractional_or_string_resources_are_refused(cfg):
    cfg["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5  # nodes advertise whole GPUs; trials take fractions
    with pytest.raises(jsonschema.ValidationError, match="0.5 is not of type 'integer'"):
        validate_cluster_config(cfg)
    cfg["available_node_types"]["gpu_1x"]["resources"]["GPU"] = "1"
    with pytest.raises(jsonschema.ValidationError, match="'1' is not of type 'integer'"):
        validate_cluster_config(cfg)


def test_unknown_head_node_type_is_refused(cfg):
    cfg["head_node_type"] = "haed"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_cluster_config(cfg)


def test_min_workers_above_the_global_max_is_refused(cfg):
    cfg["available_node_types"]["gpu_1x"]["min_workers"] = cfg["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_cluster_config(cfg)


def test_cli_reports_a_broken_copy(cfg, tmp_path):
    cfg["available_node_types"]["gpu_8x"]["max_worker"] = 1
    bad = tmp_path / "cluster.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "orchestrator", "cluster", "validate", str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "'max_worker' was unexpected" in r.stderr
