"""Fallback Routing launcher: `python main.py COMMAND` (the seeds' entry point), the same as the
installed `fallback-routing COMMAND`; `--help` lists the commands (services/cli.py)."""

from services.cli import main

if __name__ == "__main__":
    main()
