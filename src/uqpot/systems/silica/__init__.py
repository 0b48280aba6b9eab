"""silica."""
