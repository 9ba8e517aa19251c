"""probes: linear concept probes over captured activations (issue 3; not built yet)."""

__all__: list[str] = []
