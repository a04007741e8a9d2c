"""``python -m service.cli``: the ``abx`` command."""

from service.cli.main import main

main()
