"""The alternating DISCO trainer (docs/design.md, Training schedule).

Schedule: warm start of the conditional network from the annotation alone, then `rounds` of
P-step (Mask R-CNN on K pseudo labels) and C-step (Algorithm 1 against the prediction
network), then a last P-step. Under masks supervision a single supervised phase trains the
prediction network on the ground truth (the upper bound), or on a baseline's pseudo masks.

The loop is `run_step` (loss, backward, step); logging, progress and checkpoints are hooks
called after each step and each phase. A checkpoint bundle and a training state are written
after every phase; `resume` skips the phases a previous run completed.
"""

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.bundle import ModelBundle, save_bundle
from training.config import TrainConfig
from training.distributed import Rank, average_gradients
from training.items import TrainingItem
from training.steps import STEP_LOSSES

# The network each phase trains (its optimiser steps); the other one only infers.
TRAINED_NETWORK = {
    "warm_start": "conditional",
    "c_step": "conditional",
    "p_step": "prediction",
    "supervised": "prediction",
}


@dataclass(frozen=True)
class Phase:
    name: str  # warm_start | p_step | c_step | supervised
    round: int
    epochs: int


def schedule(config: TrainConfig) -> list[Phase]:
    if config.supervision == "masks" or config.baseline is not None:
        # The prediction network's epochs in DISCO: every row of a comparison trains it alike.
        return [Phase("supervised", 0, config.schedule.prediction_epochs)]
    phases = [Phase("warm_start", 0, config.warm_start_epochs)]
    for r in range(1, config.rounds + 1):
        phases += [Phase("p_step", r, config.p_epochs), Phase("c_step", r, config.c_epochs)]
    return [*phases, Phase("p_step", config.rounds + 1, config.final_p_epochs)]


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def log_path(out: Path) -> Path:
    return out.with_name(out.name + ".log.jsonl")


@dataclass
class Trainer:
    config: TrainConfig
    bundle: ModelBundle
    items: list[TrainingItem]
    out: Path
    device: torch.device
    rank: Rank = field(default_factory=Rank)
    completed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.optimizers = {
            # fused: one kernel per parameter tensor; the default loop of elementwise ops
            # took 7% of a P-step on the CPU
            "conditional": torch.optim.Adam(
                self.bundle.conditional.parameters(), lr=self.config.lr_conditional, fused=True
            ),
            "prediction": torch.optim.AdamW(
                self.bundle.prediction.parameters(),
                lr=self.config.lr_prediction,
                weight_decay=1e-4,
                fused=True,
            ),
        }
        self.rng = np.random.default_rng(self.config.seed + self.rank.index)
        self.log_file = log_path(self.out).open("a") if self.rank.is_main else None

    def set_modes(self, phase: Phase) -> None:
        """The trained network in train mode, the other one (used for inference) in eval."""
        trains_conditional = TRAINED_NETWORK[phase.name] == "conditional"
        self.bundle.conditional.train(trains_conditional)
        self.bundle.prediction.train(not trains_conditional)

    def run(self) -> None:
        for index, phase in enumerate(schedule(self.config)):
            if index < self.completed:
                continue
            start = time.perf_counter()
            self.run_phase(phase)
            self.completed = index + 1
            self.after_phase(phase, time.perf_counter() - start)

    def batches(self) -> list[list[TrainingItem]]:
        order = self.rng.permutation(len(self.items))
        size = self.config.batch_size
        return [[self.items[i] for i in order[s : s + size]] for s in range(0, len(order), size)]

    def run_phase(self, phase: Phase) -> None:
        self.set_modes(phase)
        for item in self.items:  # a P-step's samples come from the conditional network of now
            item.pseudo_labels = None
        steps = phase.epochs * math.ceil(len(self.items) / self.config.batch_size)
        bar = tqdm(
            total=steps,
            desc=f"{phase.name} r{phase.round}",
            unit="step",
            disable=not (self.progress and self.rank.is_main),
            dynamic_ncols=True,
        )
        with bar:
            for epoch in range(phase.epochs):
                self.set_learning_rate(phase, epoch)
                for batch in self.batches():
                    start = time.perf_counter()
                    terms = self.run_step(batch, phase)
                    self.after_step(phase, epoch, terms, time.perf_counter() - start, len(batch))
                    bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in terms.items()})
                    bar.update()

    def set_learning_rate(self, phase: Phase, epoch: int) -> None:
        """The prediction network's rate drops tenfold for the last `lr_drop_epochs` of its
        last phase."""
        if TRAINED_NETWORK[phase.name] != "prediction":
            return
        last_phase = schedule(self.config)[-1] == phase
        dropped = last_phase and epoch >= phase.epochs - self.config.lr_drop_epochs
        for group in self.optimizers["prediction"].param_groups:
            group["lr"] = self.config.lr_prediction * (0.1 if dropped else 1.0)

    def run_step(self, batch: list[TrainingItem], phase: Phase) -> dict[str, float]:
        terms = STEP_LOSSES[phase.name](batch, self.bundle, self.config, self.device)
        objective = sum(v for k, v in terms.items() if k.startswith("loss_"))
        if not torch.isfinite(objective):
            raise FloatingPointError(
                f"non-finite loss: { {k: float(v.detach()) for k, v in terms.items()} }"
            )
        trained = TRAINED_NETWORK[phase.name]
        optimizer = self.optimizers[trained]
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        average_gradients([getattr(self.bundle, trained)], self.rank)
        if trained == "prediction" and self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(
                self.bundle.prediction.parameters(), self.config.max_grad_norm
            )
        optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def after_step(
        self, phase: Phase, epoch: int, terms: dict[str, float], seconds: float, images: int
    ) -> None:
        self._log(
            event="step",
            phase=phase.name,
            round=phase.round,
            epoch=epoch,
            seconds=round(seconds, 4),
            images=images,
            terms=terms,
        )

    def after_phase(self, phase: Phase, seconds: float) -> None:
        self._log(event="phase_end", phase=phase.name, round=phase.round, seconds=round(seconds, 2))
        if TRAINED_NETWORK[phase.name] == "prediction":  # every rank's P-steps read it
            self.bundle.metadata["prediction_trained"] = True
        if self.rank.is_main:
            self.bundle.metadata.update(
                {"training": self.config.as_dict(), "completed_phases": self.completed}
            )
            save_bundle(self.bundle, self.out)
            self.save_state()

    def _log(self, **record: object) -> None:
        if self.log_file is not None:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()

    def save_state(self) -> None:
        state = {
            "config": self.config.as_dict(),
            "completed": self.completed,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.random.get_rng_state(),
        }
        torch.save(state, state_path(self.out))

    def load_state(self) -> None:
        """Continue an interrupted run: restore optimisers, RNGs and the completed phases."""
        state = torch.load(state_path(self.out), weights_only=False)
        if state["config"] != self.config.as_dict():
            raise ValueError(
                "cannot resume: the training settings differ from the interrupted run's"
            )
        self.completed = state["completed"]
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.rng.bit_generator.state = state["rng"]
        torch.random.set_rng_state(state["torch_rng"])
