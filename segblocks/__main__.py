"""``python -m segblocks fit -c recipes/pro_scale.yaml``: the ``segblocks`` command (see ``--help``)."""
from segblocks.lightning.cli import main

if __name__ == "__main__":
    main(prog="segblocks")
