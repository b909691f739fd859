"""Worker for test_trainer's data-parallel test: a tiny linear regression.

Run by torchrun (`python -m torch.distributed.run --nproc_per_node=2 _ddp_worker.py OUT`)
it trains with DistributedDataParallel; run alone (`main(OUT)`) it trains in one process.
Writes OUT/params-<rank>.safetensors (after the fixed-data stages), OUT/generated-<rank>
.safetensors (after a generated-data stage), OUT/recurrent-<rank>.safetensors (a linear
recurrence with a learned initial state, by truncated BPTT) and OUT/info-<rank>.json.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from mbdl_app.training import Stage, TrainConfig, Trainer, seed_everything

W_TRUE = torch.tensor([[1.0, -2.0, 0.5]])


class Recurrence(nn.Module):
    """h_t = a h_{t-1} + b x_t from a learned h_0 (used by the first chunk only)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(0.9)), nn.Parameter(torch.tensor(0.3))
        self.h0 = nn.Parameter(torch.tensor([0.5]))

    def init_state(self, x):
        return self.h0.expand(x.shape[0], 1)

    def step(self, h, x_t):
        h = self.a * h + self.b * x_t
        return h, h


def sequences():
    x = torch.randn(16, 10, 1, generator=torch.Generator().manual_seed(2))
    return x, torch.cumsum(x, dim=1)


def problem():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    return x, x @ W_TRUE.T + 0.1 * torch.randn(64, 1, generator=g)


def main(out: Path) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    model = nn.Linear(3, 1)
    x, y = problem()
    events = []
    cfg = TrainConfig(lr=0.05, max_steps=6, batch_size=16, eval_every=3, checkpoint_dir=out / "ckpt",
                      checkpoint_every=2, grad_clip=5.0, device="cpu")
    with Trainer(model, nn.functional.mse_loss, (x, y), (x[:16], y[:16]), cfg, log=events.append,
                 quiet=True) as trainer:
        rank, world = trainer.ranks.rank, trainer.ranks.world_size
        first = trainer.fit(Stage("all"))
        trainer.fit(Stage("bias", params=lambda m: [m.bias], max_steps=4))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  out / f"params-{rank}.safetensors")

        drawn = []

        def generate(step, g):
            xb = torch.randn(8, 3, generator=g)
            drawn.append(float(xb.sum()))
            return xb, xb @ W_TRUE.T

        gen_cfg = TrainConfig(lr=0.01, max_steps=3, eval_every=3, device="cpu")
        with Trainer(model, nn.functional.mse_loss, generate, None, gen_cfg, quiet=True) as gen:
            gen.fit()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  out / f"generated-{rank}.safetensors")
        rnn = Recurrence()
        rnn_cfg = TrainConfig(lr=0.05, max_steps=3, batch_size=8, bptt_chunk=5, device="cpu")
        with Trainer(rnn, nn.functional.mse_loss, sequences(), None, rnn_cfg, quiet=True) as rec:
            rec.fit()
        save_file(dict(rnn.state_dict()), out / f"recurrent-{rank}.safetensors")
        in_group = dist.is_initialized()
    info = {"rank": rank, "world": world, "events": len(events), "first_best": first.best_metric,
            "drawn": drawn, "group_kept_by_inner_trainer": in_group, "group_left": not dist.is_initialized()}
    (out / f"info-{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
