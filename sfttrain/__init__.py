"""sfttrain."""
