"""Training: the loop (``loop.run``) and the pieces it reads top to bottom."""
