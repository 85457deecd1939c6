"""inferers."""
