"""The audit log's formats: RFC 9162 Merkle trees, C2SP signed notes and checkpoints."""

__all__: list[str] = []
