"""Views of a run: terminal, JSON trace and HTML page, all over the same records."""
