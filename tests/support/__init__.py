"""Importable helpers for tests that run uqpot in subprocesses."""
