"""``python -m uqpot``: the ``uqpot`` command."""

from .cli import main

if __name__ == "__main__":
    main()
