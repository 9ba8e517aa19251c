"""editing: causal tracing and ROME rank-one weight edits (issue 5; not built yet)."""

__all__: list[str] = []
