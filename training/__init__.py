"""discoseg training: datasets, the alternating DISCO trainer, evaluation and the CLI."""
