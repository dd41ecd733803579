"""``python -m segblocks fit -c recipes/pro_scale.yaml``."""
from segblocks.lightning.cli import main

if __name__ == "__main__":
    main()
