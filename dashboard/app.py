"""The dashboard's entry point at the top of the repository: ``python dashboard/app.py [--port ...]``.

The app itself is ``powerpipe.dashboard`` (``powerpipe dashboard`` runs the same; WSGI servers take
``powerpipe.dashboard.app:server``).
"""

import sys

from powerpipe.dashboard.app import main

if __name__ == "__main__":
    sys.exit(main())
