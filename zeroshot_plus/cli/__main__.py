"""``python -m zeroshot_plus.cli``: the same as the ``zeroshot-plus`` console script."""

from .main import run

run()
