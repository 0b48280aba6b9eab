"""What every layer of uqpot builds on: one-line user errors, the field and unit registries, strict config
sections and their YAML reading, versions and atomic writes, fixed threads, executors, devices, the run
directory's checks and progress lines.  Nothing here imports torch at import time or any other part of uqpot."""
