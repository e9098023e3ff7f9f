"""The job bodies on top of everything: train, eval, predict, export (one module each, called by ``cli``)."""
