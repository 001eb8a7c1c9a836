"""Fixed-output networks for the DeepProbLog frontend's tests (a helper module, no tests)."""

from __future__ import annotations

import torch


class Table(torch.nn.Module):
    """Input index ``i`` -> row ``i`` of a table (probabilities or log-probabilities, as a
    parameter, no softmax): ``[rows]`` indices -> ``[rows, n]``; a 0-d index -> ``[n]``, as
    DeepProbLog's unbatched networks return."""

    def __init__(self, rows):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.as_tensor(rows, dtype=torch.float64).clone())

    def forward(self, index):
        return self.weight[index.long()]
