"""SBRNN: the sliding bidirectional RNN detector, the black-box baseline of seed Fig. 9.

Farsad & Goldsmith, "Neural network detection of data sequences in communication systems",
IEEE TSP 2018 (the seed's [45]); ANCHORS.md: a stacked bidirectional LSTM (hidden 80,
3 layers) on sliding windows, overlapping estimates averaged. No channel model, no trellis:

    windows  x_j = (y_{j r}, ..., y_{j r + W - 1}),  j = 0 .. (B - W) / r     (stride r)
    p_j = sigmoid(Linear(BiLSTM_3(x_j)))  in (0, 1)^W:  P(s = alphabet[1]) at each position
    P(s_i = alphabet[1] | y) = the mean of p_j at i over the windows j that hold i.

The paper slides by one symbol; we slide by r = W / 2 (each symbol estimated by two
windows, the block's first and last r by one) so that a 500-symbol block costs 49 windows
of 20 instead of 481: the detector then keeps up with 10,000 symbols/s beside the others.
Windows lie within a block (blocks are detected independently). The received samples are
standardized by the training data's mean and std (buffers). Trained by binary cross entropy
on windows of a training sequence (mbdl_app/training/recipes/comms.py, `train_sbrnn`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.comms import detectors


class SBRNN(nn.Module):
    """Blocks x (N, B) -> P(s_i = alphabet[1] | y) (N, B) (module docstring); `window_logits` for training."""

    def __init__(self, block: int = 500, window: int = 20, stride: int = 10, hidden: int = 80,
                 layers: int = 3) -> None:
        super().__init__()
        if window > block or window % stride or (block - window) % stride:
            raise ValueError(f"window {window} and stride {stride} must tile the block of {block}: "
                             "stride divides the window and block - window")
        self.block, self.window, self.stride = block, window, stride
        self.lstm = nn.LSTM(1, hidden, layers, batch_first=True, bidirectional=True)
        self.readout = nn.Linear(2 * hidden, 1)
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        starts = torch.arange(0, block - window + 1, stride)
        self.register_buffer("index", starts[:, None] + torch.arange(window), persistent=False)
        r = window // stride
        counts = F.pad(torch.ones(len(starts), 1), (0, 0, 0, r - 1))
        counts = sum(counts.roll(q, 0) for q in range(r))  # windows that hold each stride-long segment
        self.register_buffer("counts", counts, persistent=False)

    def window_logits(self, x: Tensor) -> Tensor:
        """Logits of P(s = alphabet[1]) at every position of windows x (M, W) -> (M, W)."""
        h, _ = self.lstm(((x - self.y_mean) / self.y_std)[..., None])
        return self.readout(h)[..., 0]

    def forward(self, x: Tensor) -> Tensor:
        N, r, s = x.shape[0], self.window // self.stride, self.stride
        windows = x[:, self.index]  # (N, n_windows, W)
        p = torch.sigmoid(self.window_logits(windows.reshape(-1, self.window)))
        p = p.reshape(N, -1, r, s)
        n = p.shape[1]
        # segment m of the block is part q of window m - q: sum the r shifted parts, then average
        total = sum(F.pad(p[:, :, q], (0, 0, q, r - 1 - q)) for q in range(r))
        return (total / self.counts).reshape(N, (n + r - 1) * s)


class SlidingDetector(detectors.SlidingDetector):
    """engines/comms/detectors.py's SlidingDetector (torch-free) that also takes the torch module
    itself as `run` (training and fig9 detect with the module they train)."""

    def probabilities(self, y: np.ndarray) -> np.ndarray:
        if isinstance(self.run, nn.Module):
            with torch.inference_mode():
                return self.run(torch.from_numpy(y).float()).double().numpy()
        return super().probabilities(y)


def fit_sbrnn(module: SBRNN, y: Tensor, s: Tensor, alphabet: tuple[float, float], steps: int = 500,
              batch: int = 32, lr: float = 1e-3, generator: torch.Generator | None = None) -> list[float]:
    """Train on windows of one received sequence y (n,) with its symbols s (n,): Adam at `lr`,
    `steps` minibatches of `batch` windows at random offsets, binary cross entropy per position.
    Sets the standardization from y. Returns the loss at every 50th step."""
    y, s = torch.as_tensor(y, dtype=torch.float32), torch.as_tensor(s)
    bits = (s == alphabet[1]).float()
    with torch.no_grad():
        module.y_mean.copy_(y.mean())
        module.y_std.copy_(y.std().clamp_min(1e-6))
    W = module.window
    offsets = torch.arange(W)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    losses = []
    module.train()
    for step in range(steps):
        idx = torch.randint(0, len(y) - W + 1, (batch, 1), generator=generator) + offsets
        loss = F.binary_cross_entropy_with_logits(module.window_logits(y[idx]), bits[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(loss.item())
    module.eval()
    return losses
