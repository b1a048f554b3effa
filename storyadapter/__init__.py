"""storyadapter: distributed renderer for long illustrated stories with consistent characters."""

__version__ = "0.1.0"
