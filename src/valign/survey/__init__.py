"""The public values survey: instruments, the web app, its database, quality checks,
weighting to census margins, analysis and export (seed 001)."""
