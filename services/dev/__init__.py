"""Tools for development and demonstration: the simulated model server and `main.py demo`.

May import every other folder (the demo runs the real gateway)."""
