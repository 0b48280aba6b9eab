"""Sampling new structures for the oracle, behind one contract (:class:`~uqpot.sample.base.Sampler`, chosen
by ``loop.sampler``):

* ``adversarial``: the paper's attack on the uncertainty (Eq. 15-16; :mod:`uqpot.sample.adversarial`);
* ``md``: uncertainty-selected MD frames between two calibrated trust levels (:mod:`uqpot.sample.md`);
* ``biased_md``: uncertainty-driven (biased) MD, frames selected the same way (:mod:`uqpot.sample.biased_md`).

Each gives unlabelled structures (with ``info`` saying where they came from) that the loop labels, stores
and resumes in the same way; :mod:`uqpot.sample.trust` holds the trust band and the diverse picking.
Importing this package registers the built-in samplers; a sampler defined elsewhere registers itself when
its module is imported (``@register_sampler``).
"""

from .base import (SAMPLERS, Proposal, Sampler, SamplerName, SamplingContext, get_sampler,  # noqa: F401
                   register_sampler, sampler_names)
from .adversarial import AdversarialSampler, AttackSettings  # noqa: F401
from .md import MDSampler, SamplingSettings  # noqa: F401
from .biased_md import BiasedMDSampler  # noqa: F401
