"""DDP on CPU: two gloo processes under torchrun train the toy model through the Trainer.

Checks that only rank 0 writes checkpoints and logs, that both ranks end with identical
weights, and that validation metrics are reduced across ranks with the right weights.
This file is also the script torchrun starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.torchrun import run_torchrun


def main(run_dir: Path) -> int:
    """One rank: train, then save this rank's final weights for the test to compare."""
    from tests.integration.test_resume import STAGE, ToyDataset, build_trainer, toy_config
    from volseg.engine import cleanup_distributed, init_distributed

    torch.set_num_threads(1)
    info = init_distributed()
    val = ToyDataset(seed=10_000)
    # Each rank validates a different number of cases: rank r holds r + 1 of them.
    items = [val[i] for i in range(info.rank * 2, info.rank * 2 + info.rank + 1)]
    val_x = torch.stack([it["image"] for it in items])
    val_y = torch.stack([it["target"] for it in items])

    def val_fn(state):  # sees this rank's share; the trainer reduces
        mse = F.mse_loss(state.raw("net")(val_x), val_y).item()
        return {"mse": mse, "score": float(info.rank + 1), "_weight": float(len(items))}

    cfg = toy_config(epochs=2, iters_per_epoch=4, checkpoint_every=2)
    trainer = build_trainer(run_dir, cfg, val_fn=val_fn, val_mode="all")
    result = trainer.fit(resume=True)
    torch.save(trainer.state.raw("net").state_dict(), run_dir / f"rank{info.rank}.pt")
    assert result.global_step == 8 and STAGE
    cleanup_distributed()
    return 0


@pytest.mark.timeout(120)
def test_two_gloo_ranks_train_in_step(tmp_path: Path) -> None:
    from tests.integration.test_resume import STAGE
    from volseg.engine import load_checkpoint, read_metrics

    proc = run_torchrun([str(Path(__file__)), str(tmp_path)], timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]

    stage_dir = tmp_path / STAGE
    assert sorted(p.name for p in stage_dir.iterdir()) == [
        "checkpoint_best.pt",
        "checkpoint_last.pt",
        "metrics.jsonl",
        "tb",
    ]
    records = read_metrics(stage_dir / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["type"] == "train"]
    assert train_steps == sorted(set(train_steps)) == [2, 4, 6, 8]  # written once, by rank 0
    vals = [r for r in records if r["type"] == "val"]
    assert [v["epoch"] for v in vals] == [1, 2]
    for v in vals:  # rank 0 scores 1 on 1 case, rank 1 scores 2 on 2 cases
        assert v["score"] == pytest.approx((1 * 1 + 2 * 2) / 3)
        assert "_weight" not in v

    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    ckpt = load_checkpoint(stage_dir / "checkpoint_last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # own dropout
    for key, tensor in w0.items():
        assert torch.equal(tensor, w1[key]), key
        assert torch.equal(tensor, ckpt["modules"]["net"][key]), key


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
