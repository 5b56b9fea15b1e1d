"""Integration tests run on 1 torch thread (shared 2-core CI machine)."""

import torch

torch.set_num_threads(1)
