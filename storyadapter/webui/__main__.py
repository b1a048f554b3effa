"""`python -m storyadapter.webui`: the web UI server (server.py)."""

from .server import main

main()
