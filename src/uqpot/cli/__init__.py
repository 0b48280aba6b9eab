"""The ``uqpot`` command line: the commands (:mod:`~uqpot.cli.main`), ``uqpot data``
(:mod:`~uqpot.cli.data`) and the one error path (:mod:`~uqpot.cli.errors`)."""
