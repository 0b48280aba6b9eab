"""The ``train`` section of a config: the training settings of the engine (:mod:`uqpot.train.trainer`)."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from ..core.devices import check_device_name
from ..core.schema import Strict


class TrainConfig(Strict):
    epochs: int = Field(500, ge=1)
    batch_size: int = Field(64, ge=1)
    val_batch_size: Optional[int] = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    lr_patience: int = Field(30, ge=1, description="epochs without validation improvement before the lr is cut")
    min_lr: float = Field(1e-7, ge=0.0)
    early_stopping: Optional[int] = Field(
        None, ge=1, description="stop after this many epochs without improvement (default: off)")
    stop_at_min_lr: bool = Field(True, description="stop once the lr has reached min_lr and stalls again")
    energy_weight: float = Field(0.1, ge=0.0)
    forces_weight: float = Field(1.0, ge=0.0)
    #: weight of the stress term (MAE of V·σ/N, kcal/mol per atom; :mod:`uqpot.train.losses`); unset: 1 where
    #: every training structure carries a stress and the model gives one, else 0
    stress_weight: Optional[float] = Field(None, ge=0.0)
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "auto"
    grad_clip: Optional[float] = Field(None, gt=0.0)
    max_nonfinite: int = Field(5, ge=0, description="non-finite losses tolerated per epoch before rollback")
    max_hours: Optional[float] = Field(None, gt=0.0)
    progress: bool = True
    layout: Literal["auto", "sparse", "dense"] = Field(
        "auto", description="pair layout: 'dense' (all pairs of a molecule on a padded grid, no gathers or "
        "scatters), 'sparse' (edge list) or 'auto' (dense for molecules of at most 32 atoms when the step is "
        "compiled, else sparse); same results to float tolerance")
    member_order: Literal["auto", "shared", "independent"] = Field(
        "auto", description="ensembles: 'independent' gives every member its own batch order (its own seed), "
        "as separately trained networks see, in one stacked step (one molecule on the dense layout); 'shared' "
        "one order for all; 'auto' independent where the data allows (uqpot.train.member_order)")
    compile: Union[bool, Literal["auto"]] = Field(
        "auto", description="compile the training step with torch.compile (forces by torch.func.grad), on "
        "the dense layout (molecules of at most 32 atoms); the first steps pay the compilation, later ones "
        "run faster; same results to float tolerance.  'auto': where the measured break-even says the run's "
        "steps repay the compilation (uqpot.train.autocompile)")
    compile_mode: Literal["default", "reduce-overhead"] = Field(
        "default", description="torch.compile's mode for the compiled step: 'reduce-overhead' captures it as a "
        "CUDA graph on a GPU (one launch per step instead of hundreds; inputs copied into static buffers); on "
        "a CPU it compiles as 'default'")

    @field_validator("device")
    @classmethod
    def _device_name(cls, v):
        return check_device_name(v)

    @model_validator(mode="after")
    def _weights(self):
        if self.energy_weight == 0 and self.forces_weight == 0:
            raise ValueError("train.energy_weight and train.forces_weight are both 0: the loss would be 0 whatever "
                             "the model predicts; give at least one a positive weight (defaults 0.1 and 1.0)")
        return self
