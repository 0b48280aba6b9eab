"""The paper's studies end to end (``uqpot reproduce``): study files, their plans and estimated costs
(``--dry-run``), the sampler comparison, and which report a result directory gets (``uqpot report``)."""
