"""``python -m ckptfix``: the same as the ``ckptfix`` command."""

from ckptfix.cli.app import main

if __name__ == "__main__":
    main()
