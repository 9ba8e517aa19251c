"""steer: steering vectors, computed from contrastive data and injected at inference (issue 4; not built yet)."""

__all__: list[str] = []
