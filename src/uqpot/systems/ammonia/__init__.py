"""ammonia."""
