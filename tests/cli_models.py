"""Tiny model factories for the CLI tests (`lqkernels report cli_models:tiny_mlp`)."""
import torch
from torch import nn


def tiny_mlp() -> nn.Sequential:
    """12 → 16 → 3 ReLU MLP with a fixed seed (the same weights every call)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def not_a_module():
    return 42
