"""SevenNet (Park et al., J. Chem. Theory Comput. 2024; the ``sevenn`` package) as a uqpot backbone
(:mod:`uqpot.nn.backbone`): ``model.kind: sevennet`` with a checkpoint that ships inside the package
(``7net-0``, SevenNet-0 of 11 July 2024, the default), so that nothing is downloaded at run time.

The network is SevenNet's own, built by ``sevenn.model_build.build_E3_equivariant_model`` from plain
hyper-parameters (``hparams["sevennet"]``: the checkpoint's model settings, its type map as a list of atomic
numbers), so that a uqpot model file holds its state dict and never a pickled object.  uqpot feeds it the
data layer's edge lists: SevenNet's edge (i, j) carries r_j − r_i (+ the image offset) and sends from j to
i, which is uqpot's edge (i, j) as it is.  uqpot runs SevenNet's modules up to its readout and takes:

* the atomic energies without SevenNet's per-element shift: scale(Z_i) · w·h_i (eV), times the energy scale
  1 eV in kcal/mol (:data:`uqpot.core.units.EV_TO_KCAL_PER_MOL`); the shift (eV) becomes uqpot's float64
  reference energies e_ref(Z) (kcal/mol) and the network's own shift is set to zero (as MACE's E0);
* ξ, the invariant node features after the last interaction (SevenNet-0: 128 scalars), the input of
  ``reduce_input_to_hidden`` (what GMM, MVE and evidential heads read);
* h̃ = scale(Z_i) · h_i, with h_i the input of ``reduce_hidden_to_energy`` (SevenNet-0: 64 scalars; both
  readout maps are linear, without bias): the atomic energy is linear in h̃ with weights shared by every
  element, which makes it LLPR's last layer (a constant column is added where the readout has a bias).

Forces and stress are uqpot's (:mod:`uqpot.nn.response`: −∂E/∂r and (1/V) ∂E/∂ε of the same energy), not
SevenNet's force module; ``tests/test_sevennet.py`` checks energy, forces and stress against SevenNet's own
ASE calculator on a molecule and on a triclinic periodic cell.

Members.  As for MACE (:mod:`uqpot.nn.mace`): M networks as one set of stacked parameters, member m
evaluated with its slice (``torch.func.functional_call``); every member starts from the checkpoint's weights.

Versions.  mace-torch 0.3.16 pins e3nn 0.4.4; sevenn >= 0.11 requires e3nn >= 0.5 and refuses 0.4.4 on import;
sevenn 0.10.4 runs on e3nn 0.4.4 and gives SevenNet-0's energies and forces of sevenn 0.13 on e3nn 0.6 (to
float32 rounding), so the test environment holds both with sevenn 0.10.4.  e3nn 0.4.4 loads a constants file
holding ``slice`` with ``weights_only``: :func:`import_sevenn` allows it, as :func:`uqpot.nn.mace.import_mace`.
The packaged checkpoints are pickles read with ``weights_only=False``: they are part of the installed package
(its own code is trusted by installing it); a user's checkpoint file goes through ``uqpot convert --trusted``.
"""

from __future__ import annotations

import re

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..core import fields as F
from ..core.units import EV_TO_KCAL_PER_MOL
from ..data.batch import AtomsBatch, INFERENCE_MAX_ATOMS, iterate_batches
from .backbone import BackboneOptions, register_backbone
from .potential import MAX_Z, Potential, composition_counts

INSTALL_HINT = "SevenNet needs sevenn: pip install 'uqpot[sevennet]'"
LAST_LAYER = "last_layer_features"
F.register(LAST_LAYER, True, "kcal/mol", "inputs of the final linear readout maps (LLPR's last layer)")

#: the model settings of a SevenNet checkpoint that uqpot keeps (besides the keys of sevenn's model defaults)
_EXTRA_KEYS = ("cutoff", "_number_of_species", "shift", "scale", "conv_denominator",
               "use_species_wise_shift_scale", "train_denominator", "_normalize_sph")
#: the modules that follow the readout (uqpot computes the sum, forces and stress itself)
_AFTER_READOUT = ("rescale_atomic_energy", "reduce_total_enegy", "force_output")


def import_sevenn():
    """``sevenn`` (and e3nn), imported with ``slice`` allowed for ``weights_only`` loads (see module)."""
    torch.serialization.add_safe_globals([slice])
    try:
        import e3nn.o3  # noqa: F401  (loads its constants with weights_only)
        import sevenn
        import sevenn.util  # noqa: F401
        from sevenn import model_build  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    except ValueError as exc:  # sevenn >= 0.11 on e3nn 0.4.4 (as mace-torch 0.3.16 pins it)
        raise ImportError(f"{INSTALL_HINT}: {exc} (sevenn 0.10.4 runs on e3nn 0.4.4 beside mace-torch)") from None
    return sevenn


def _no_download(*args, **kwargs):
    raise FileNotFoundError("not in the installed package (uqpot never downloads weights)")


def checkpoint_path(name: str) -> str:
    """The file of a checkpoint that ships inside the installed sevenn (``7net-0``, ...).  Names whose
    weights sevenn >= 0.12 would download at run time are refused: uqpot never downloads weights."""
    sevenn = import_sevenn()
    download = getattr(sevenn.util, "download_checkpoint", None)
    if download is not None:
        sevenn.util.download_checkpoint = _no_download
    try:
        return str(sevenn.util.pretrained_name_to_path(name))
    except (ValueError, KeyError, NotImplementedError, FileNotFoundError) as exc:
        raise ValueError(f"sevenn {sevenn.__version__} ships no checkpoint named {name!r} ({exc})") from None
    finally:
        if download is not None:
            sevenn.util.download_checkpoint = download


def read_checkpoint(path) -> tuple[dict, nn.Module]:
    """(plain model settings, SevenNet's network with its weights) of a SevenNet checkpoint file: a pickle,
    read with ``weights_only=False`` (see module: only for packaged or trusted files)."""
    sevenn = import_sevenn()
    import warnings

    with warnings.catch_warnings():  # sevenn's notes on settings it fills in with defaults
        warnings.simplefilter("ignore")
        model, config = sevenn.util.model_from_checkpoint(str(path))  # sevenn 0.10 to 0.13
    return plain_config(config), model


def plain_config(config: dict) -> dict:
    """The model settings of a sevenn config as plain values (lists, numbers, strings; the type map as
    the atomic numbers in type order)."""
    from sevenn._const import model_defaults

    cfg = dict(config)
    if cfg.get("use_modality") or cfg.get("_modal_map"):
        raise ValueError("multi-fidelity SevenNet checkpoints are not supported by uqpot yet")
    if cfg.get("readout_as_fcn"):
        raise ValueError("SevenNet checkpoints with an MLP readout (readout_as_fcn) are not supported by uqpot")
    keys = set(model_defaults(dict(cfg))) | set(_EXTRA_KEYS)

    def plain(v):
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (np.floating, np.integer, np.bool_)):
            return v.item()
        return v

    out = {k: plain(cfg[k]) for k in sorted(keys) if k in cfg}
    type_map = cfg["_type_map"]
    out["species"] = [int(z) for z in sorted(type_map, key=type_map.get)]
    return out


def build_sevennet(cfg: dict) -> nn.Module:
    """SevenNet's network from plain settings (:func:`plain_config`)."""
    import_sevenn()
    import warnings

    from sevenn.model_build import build_E3_equivariant_model

    kw = dict(cfg)
    species = kw.pop("species")
    kw["_type_map"] = {int(z): k for k, z in enumerate(species)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_E3_equivariant_model(kw)


class _Trunk(nn.Module):
    """SevenNet's modules up to its readout: per-atom scaled energy w·h (eV before the per-element scale),
    ξ (input of ``reduce_input_to_hidden``), h (input of ``reduce_hidden_to_energy``), the scale per atom."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, data: dict):
        import sevenn._keys as KEY

        xi = hidden = None
        for name, module in self.net._modules.items():
            if name in _AFTER_READOUT:
                continue
            if name == "reduce_input_to_hidden":
                xi = data[KEY.NODE_FEATURE]
            elif name == "reduce_hidden_to_energy":
                hidden = data[KEY.NODE_FEATURE]
            data = module(data)
        scale = self.net._modules["rescale_atomic_energy"].scale
        scale = scale.index_select(0, data[KEY.ATOM_TYPE]) if scale.dim() else scale.expand(xi.shape[0])
        return data[KEY.SCALED_ATOMIC_ENERGY].squeeze(-1), xi, hidden, scale


class SevenNetOptions(BackboneOptions):
    """``model.kind: sevennet``: a SevenNet network from a checkpoint that ships inside ``sevenn``
    (``pip install 'uqpot[sevennet]'``; :mod:`uqpot.nn.sevennet`), starting from its weights."""

    kind: Literal["sevennet"]
    checkpoint: str = Field("7net-0", description="a checkpoint that ships inside sevenn (7net-0, 7net-l3i5)")
    cutoff: float = Field(5.0, gt=0.0, description="must equal the checkpoint's cutoff (Å; SevenNet-0: 5)")

    def potential_hparams(self, members: int, seeds: list[int], train=None) -> dict:
        return dict(backbone="sevennet", checkpoint=self.checkpoint, cutoff=float(self.cutoff), members=members,
                    seeds=list(seeds))


@register_backbone("sevennet", options=SevenNetOptions)
class SevenNetPotential(Potential):
    """A uqpot potential whose network is SevenNet (see the module docstring); kind ``potential`` with
    ``hparams["backbone"] == "sevennet"``."""

    title = "SevenNet"
    supports_dense = False
    compilable = False
    forward_ad = False  # not checked for sevenn's modules: LLPR stays on reverse mode

    @classmethod
    def check_available(cls) -> None:
        import_sevenn()

    def __init__(self, cutoff: float, sevennet: dict | None = None, checkpoint: str | None = None,
                 features: int | None = None, readout_hidden: int | None = None, activation: str = "silu",
                 members: int = 1, seeds: list[int] | None = None):
        """From a packaged ``checkpoint`` (its settings and weights; reference energies from its shift) or
        from plain settings ``sevennet`` (a model file's: the weights then come with its state dict).
        ``features`` and ``readout_hidden`` follow from the network (stored, and checked when given)."""
        nn.Module.__init__(self)
        seeds = list(seeds) if seeds is not None else [int(torch.initial_seed()) % 2**31 + m for m in range(members)]
        if len(seeds) != members:
            raise ValueError(f"{members} members need {members} seeds, got {len(seeds)}")
        pretrained = sevennet is None
        if pretrained:
            if checkpoint is None:
                raise ValueError("a SevenNet potential needs a checkpoint name or its settings")
            sevennet, net = read_checkpoint(checkpoint_path(checkpoint))
        else:
            net = build_sevennet(sevennet)
        if abs(float(sevennet["cutoff"]) - float(cutoff)) > 1e-9:
            raise ValueError(f"cutoff {cutoff} differs from the SevenNet network's {sevennet['cutoff']} Å")
        template = _Trunk(net)
        self._template = [template]  # not a sub-module: its tensors are replaced by the stacked ones per call
        self.members, self.cutoff = members, float(cutoff)
        self._names = [n for n, _ in template.named_parameters()]
        self._bnames = [n for n, _ in template.named_buffers()]
        self.stack = nn.Module()
        for n, p in template.named_parameters():
            self.stack.register_parameter(_key(n), nn.Parameter(p.detach().unsqueeze(0).repeat(members, *[1] * p.dim()),
                                                                requires_grad=p.requires_grad))
        for n, b in template.named_buffers():
            self.stack.register_buffer(_key(n), b.unsqueeze(0).repeat(members, *[1] * b.dim()))
        species = [int(z) for z in sevennet["species"]]
        type_index = torch.full((MAX_Z + 1,), -1, dtype=torch.int64)
        type_index[species] = torch.arange(len(species))
        self.register_buffer("type_index", type_index, persistent=False)
        net = template.net
        xi_dim = int(net._modules["reduce_input_to_hidden"].linear.irreps_in.dim)
        hidden = int(net._modules["reduce_hidden_to_energy"].linear.irreps_in.dim)
        self._bias = bool(sevennet.get("use_bias_in_linear", False))
        self._ll_dim = hidden + int(self._bias)
        self.hparams = dict(backbone="sevennet", sevennet=dict(sevennet), cutoff=float(cutoff), checkpoint=checkpoint,
                            features=xi_dim, readout_hidden=hidden, activation=activation, members=members,
                            seeds=[int(s) for s in seeds])
        for key, given in (("features", features), ("readout_hidden", readout_hidden)):
            if given is not None and int(given) != self.hparams[key]:
                raise ValueError(f"{key} {given} does not match the SevenNet network's {self.hparams[key]}")
        self._register_reference_buffers()
        self.known_elements[species] = True
        if pretrained:
            self.take_shift()

    def take_shift(self) -> None:
        """Moves SevenNet's per-element shift (eV) into uqpot's reference energies (kcal/mol, float64) and
        sets the energy scale to 1 eV in kcal/mol (see module)."""
        species = [int(z) for z in self.hparams["sevennet"]["species"]]
        with torch.no_grad():
            shift = getattr(self.stack, _key("net.rescale_atomic_energy.shift"))
            per_type = shift[0].to(torch.float64).expand(len(species)) if shift[0].dim() == 0 else shift[0].double()
            self.atomref.zero_()
            self.atomref[species] = per_type.cpu().to(self.atomref.device) * EV_TO_KCAL_PER_MOL
            shift.zero_()
            self.energy_scale.fill_(EV_TO_KCAL_PER_MOL)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._template[0]._apply(fn)
        return self

    # ----------------------------------------------------------------- the backbone interface
    @property
    def last_layer_dim(self) -> int:
        return self._ll_dim

    def block_of(self, name: str):
        """SevenNet: the modules of interaction block k (``k_convolution``, ``k_self_interaction_1``, ...) are
        block k; ``reduce_input_to_hidden``, ``reduce_hidden_to_energy`` and the per-element scale are the
        readout; the edge embedding and the one-hot feature map are the embedding."""
        m = re.match(r"stack\.net__(\d+)_", name)
        if m:
            return int(m.group(1))
        return "readout" if re.match(r"stack\.net__(reduce_|rescale_)", name) else "embedding"

    def fresh_readout(self, seeds: list[int]) -> dict[str, torch.Tensor]:
        """``reduce_input_to_hidden`` and ``reduce_hidden_to_energy`` of SevenNet networks built from the
        settings with ``torch.manual_seed(seeds[m])`` (sevenn's own initialisation); the per-element scale
        of the readout block is not an initialisation but the checkpoint's fit to its data, and is kept."""
        readout = set(dict(self.parameter_blocks())["readout"])
        nets = []
        for s in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(s))
                nets.append(dict(_Trunk(build_sevennet(self.hparams["sevennet"])).named_parameters()))
        return {f"stack.{_key(n)}": torch.stack([net[n].detach() for net in nets]) for n in self._names
                if f"stack.{_key(n)}" in readout and re.match(r"net\.reduce_", n)}

    def last_layer_features(self, out: dict) -> torch.Tensor:
        return out[LAST_LAYER] * self.energy_scale

    def elements_of_network(self) -> list[int]:
        return [int(z) for z in self.hparams["sevennet"]["species"]]

    def fit_reference(self, dataset) -> None:
        """Keeps the pretrained network's units (energy scale 1 eV) and reference energies, shifted by the
        least-squares fit of the data's energies minus the model's on composition (another level of theory
        than SevenNet's moves every e_ref(Z) by the offset between them)."""
        missing = sorted(set(dataset.elements()) - set(self.elements_of_network()))
        if missing:
            raise ValueError(f"elements {missing} are not among this SevenNet network's")
        if not dataset.has_energy or not len(dataset):
            return
        elements = dataset.elements()
        pred = np.zeros(len(dataset))
        was = self.training
        self.eval()
        with torch.no_grad():
            for idx, b in iterate_batches(dataset, 16, self.cutoff, dtype=self.dtype, device=self.device,
                                          max_atoms=INFERENCE_MAX_ATOMS):
                pred[idx] = self.forward_members(b, compute_forces=False)[F.ENERGY].mean(0).cpu().numpy()
        self.train(was)
        delta, *_ = np.linalg.lstsq(composition_counts(dataset, elements), dataset.energies() - pred, rcond=None)
        with torch.no_grad():
            self.atomref[elements] += torch.as_tensor(delta, dtype=torch.float64, device=self.atomref.device)

    def _member_state(self, m: int) -> dict:
        state = {n: getattr(self.stack, _key(n))[m] for n in self._names}
        state.update({n: getattr(self.stack, _key(n))[m] for n in self._bnames})
        return state

    def _energy_outputs(self, batch: AtomsBatch, pos_m: torch.Tensor, offsets: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        import sevenn._keys as KEY

        if batch.dense:
            raise ValueError("SevenNet reads edge lists: evaluate it on the sparse layout")
        types = self.type_index.index_select(0, batch.numbers)
        i, j = batch.edge_index[0], batch.edge_index[1]
        e_atom, xi, last = [], [], []
        for m in range(self.members):
            p = pos_m[m]
            vec = p.index_select(0, j) - p.index_select(0, i)
            if offsets is not None:
                vec = vec + offsets[m if offsets.shape[0] > 1 else 0]
            elif batch.periodic:
                vec = vec + batch.edge_offsets()
            data = {KEY.NODE_FEATURE: types, KEY.EDGE_IDX: batch.edge_index, KEY.EDGE_VEC: vec,
                    KEY.BATCH: batch.batch, KEY.NUM_ATOMS: batch.n_atoms}
            e, x, h, scale = torch.func.functional_call(self._template[0], self._member_state(m), (data,))
            e_atom.append(e * scale)
            xi.append(x)
            h = h * scale.unsqueeze(-1)
            last.append(torch.cat([h, scale.unsqueeze(-1)], -1) if self._bias else h)
        e_atom = torch.stack(e_atom).to(self.dtype) * self.energy_scale  # (M, N): SevenNet's shift is e_ref
        e_res = e_atom.new_zeros(self.members, batch.num_structures).index_add(1, batch.batch, e_atom)
        return {F.FEATURES: torch.stack(xi), F.ATOMIC_ENERGY: e_atom, F.ENERGY_RESIDUAL: e_res,
                LAST_LAYER: torch.stack(last)}

    def _forward_functional(self, batch):
        raise NotImplementedError("train.compile is not available for SevenNet networks")


def _key(name: str) -> str:
    return name.replace(".", "__")
