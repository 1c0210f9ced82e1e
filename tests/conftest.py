"""Suite-wide settings.

Tiny-model tests run far faster on one intra-op thread on a shared 2-core machine (measured: the attack
contract file 34-61 s with 2 threads, 7.6 s with 1), and several tests compare numbers across runs, so the
main test process uses one thread. Ray trial workers set their own count from their CPU allocation.
"""
import os

import torch

torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
