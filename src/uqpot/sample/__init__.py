"""Sampling new structures for the oracle, behind one interface (``loop.sampler``):

* ``adversarial``: the paper's attack on the uncertainty (Eq. 15-16; :mod:`uqpot.sample.adversarial`);
* ``md``: uncertainty-selected MD frames between two calibrated trust levels (:mod:`uqpot.sample.md`);
* ``biased_md``: uncertainty-driven (biased) MD, frames selected the same way (:mod:`uqpot.sample.biased_md`).

Each gives unlabelled structures (with ``info`` saying where they came from) that the loop labels, stores
and resumes in the same way; :mod:`uqpot.sample.trust` holds the trust band and the diverse picking.
"""

SAMPLERS = ("adversarial", "md", "biased_md")
