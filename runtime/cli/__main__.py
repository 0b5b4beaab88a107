"""``python -m runtime.cli``: the same as the ``chat-engine`` console script."""

from runtime.cli import main

main()
