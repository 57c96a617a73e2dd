"""Fine-tune a trained run on noisy or adversarial faces, for inversion (docs/inversion.md).

Run from the repository root::

    .venv/bin/python benchmarks/robust_finetune.py runs/lfw_full_v6 --noise 1.0 --out runs/pag_noise1.0
    .venv/bin/python benchmarks/robust_finetune.py runs/lfw_full_v6 --adversarial 4.0 --out runs/pag_adv4
    .venv/bin/python benchmarks/robust_finetune.py runs/pag_adv4 --adversarial 8 --out runs/pag_adv4_8
    .venv/bin/python benchmarks/robust_finetune.py runs/pag_adv4_8_16 --adversarial 16 --attack-steps 2 --out runs/pag_adv4_8_16_pgd2

(a fine-tuned run is a run folder too, so stronger attacks continue from milder ones).

Classifiers robust to small input changes have input gradients that look like their classes, which
is what inversion follows. The run's own recipe (its config.yaml: data, augmentation, head) continues
from its newest checkpoint (backbone and class centers) for ``--steps`` steps, SGD from ``--lr``
decaying to 0, no warmup, with one of:

* ``--noise S``: Gaussian noise on every training image, std drawn per image in [0, S] (images span
  [-1, 1]); the same distribution as ``data.augment.noise=S`` of ``arcface train``.
* ``--adversarial E``: every image first moved within an L2 ball of per-image radius in [0, E] up
  the margin loss: one step of that length along the gradient (fast adversarial training; twice the
  cost of a step), or with ``--attack-steps K`` projected gradient ascent of K steps (K + 1 times the
  cost of a step).

Then the BatchNorm running statistics are re-estimated on ``--calibration-batches`` batches of clean
training images (cumulative average): inversion's prior matches them, and the noisy or attacked
inputs shifted them. The newest checkpoint of ``--out`` is rewritten with them; ``best.pt`` keeps
the statistics of training. Prints the training loop's pairsDevTest accuracy at the last step.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from arcface.backbones import create_backbone
from arcface.train import loop
from arcface.train.checkpoint import atomic_torch_save, load_checkpoint_or_run
from arcface.train.config import load_config

log = logging.getLogger("robust_finetune")


def l2_attack(loss_of, images: torch.Tensor, lengths: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Images moved up ``loss_of`` within an L2 ball of per-image radius ``lengths`` ((B, 1, 1, 1)).

    One step is the fast attack: the full length along the normalized gradient. Several steps are
    projected gradient ascent (Madry et al. 2018): each of length 2.5 * radius / steps along the
    normalized gradient at the current point, then projected back onto the ball, so the attack can
    follow the loss around its curvature instead of trusting its slope at the clean image.
    ``loss_of``: (B, 3, H, W) -> scalar; images: (B, 3, H, W). Returns detached images.
    """
    step_length = lengths if steps == 1 else 2.5 * lengths / steps
    moved = images.detach()
    for _ in range(steps):
        moved = moved.requires_grad_(True)
        gradient = torch.autograd.grad(loss_of(moved), moved)[0].float()
        direction = gradient / gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        offset = (moved.detach() - images) + step_length * direction
        norm = offset.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        offset = offset * torch.clamp(lengths / norm.clamp_min(1e-12), max=1.0)
        moved = (images + offset.to(images.dtype)).detach()
    return moved


def perturbation(kind: str, strength: float, generator: torch.Generator, attack_steps: int = 1):
    """A function (run, images, labels) -> images to train on instead of ``images`` ((B, 3, H, W))."""

    def noisy(run, images, labels):
        std = torch.rand(images.shape[0], 1, 1, 1, generator=generator) * strength
        return images + std * torch.randn(images.shape, generator=generator)

    def adversarial(run, images, labels):
        images = images.to(run.device).contiguous(memory_format=run.memory_format)
        labels = labels.to(run.device)

        def margin_loss(moved):
            with torch.autocast(run.device.type, dtype=run.autocast_dtype or torch.float32, enabled=run.autocast_dtype is not None):
                embeddings = run.forward(moved)
            return run.head(embeddings, labels)

        lengths = torch.rand(images.shape[0], 1, 1, 1, generator=generator) * strength
        return l2_attack(margin_loss, images, lengths.to(run.device), attack_steps)

    return noisy if kind == "noise" else adversarial


def recalibrate_batchnorm(backbone: torch.nn.Module, dataset, batches: int, batch_size: int, autocast, device: str = "cpu") -> None:
    """Running statistics of every BatchNorm layer from ``batches`` clean batches (cumulative average)."""
    for module in backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    backbone.train()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), autocast:
        for index, (images, _) in enumerate(loader):
            if index == batches:
                break
            backbone(images.to(device).contiguous(memory_format=torch.channels_last))


def perturbing_callback(change) -> loop.TrainCallback:
    """A training callback under which every step of ``loop.train`` trains on ``change(run, images, labels)``."""

    class Perturb(loop.TrainCallback):
        def on_micro_batch(self, run, images, labels):
            return change(run, images, labels)

    return Perturb()


def recalibrate_newest_checkpoint(run_dir, config, batches: int, device: str = "cpu") -> Path:
    """Re-estimate the BatchNorm statistics of the run's newest checkpoint on clean images; rewrites it."""
    path, state = load_checkpoint_or_run(run_dir)
    model = config.model
    backbone = create_backbone(model.backbone, embedding_size=model.embedding_size, dropout=model.dropout)
    backbone.load_state_dict(state["backbone"])
    backbone.to(device)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=config.precision.autocast == "bf16")
    recalibrate_batchnorm(backbone, loop._build_dataset(config), batches, config.data.batch_size, autocast, device)
    state["backbone"] = {name: tensor.cpu() for name, tensor in backbone.state_dict().items()}
    atomic_torch_save(state, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder of arcface train / arcface lfw (its config.yaml and newest checkpoint)")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--noise", type=float, help="max per-image std of Gaussian noise (images span [-1, 1])")
    kind.add_argument("--adversarial", type=float, help="max per-image L2 radius of the attack")
    parser.add_argument("--attack-steps", type=int, default=1,
                        help="steps of the L2 attack: 1 = the fast one-step attack, more = projected gradient ascent")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--calibration-batches", type=int, default=41)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    strength = args.noise if args.noise is not None else args.adversarial
    if strength <= 0 or args.steps < 1 or args.attack_steps < 1:
        parser.error("the strength, --steps and --attack-steps must be positive")
    if args.attack_steps != 1 and args.noise is not None:
        parser.error("--attack-steps is a setting of --adversarial, not of --noise")
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        parser.error(f"{run}: not a run folder (no config.yaml)")

    config = load_config(run / "config.yaml", [
        f"model.init_from={run}", f"head.init_from={run}", f"optim.lr={args.lr}", f"schedule.max_steps={args.steps}",
        "schedule.time_budget_minutes=0", "schedule.warmup_fraction=0", f"eval.every_steps={args.steps}",
        "checkpoint.every_minutes=0", f"checkpoint.every_steps={args.steps}",
    ])
    change = perturbation("noise" if args.noise is not None else "adversarial", strength, torch.Generator().manual_seed(args.seed),
                          args.attack_steps)
    summary = loop.train(config, args.out, callbacks=[perturbing_callback(change)])
    path = recalibrate_newest_checkpoint(args.out, config, args.calibration_batches)
    log.info("BatchNorm statistics re-estimated on %d clean batches, written to %s", args.calibration_batches, path)
    if summary["best_accuracy"] is not None:  # a run trained without evaluation (eval.pairs null) has none
        print(f"pairsDevTest_accuracy_pct={100 * summary['best_accuracy']:.2f}")


if __name__ == "__main__":
    main()
