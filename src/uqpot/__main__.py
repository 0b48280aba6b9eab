"""``python -m uqpot``: the ``uqpot`` command."""

from .cli.main import main

if __name__ == "__main__":
    main()
