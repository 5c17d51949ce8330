"""``python -m slimformer ...`` (and ``accelerate launch -m slimformer ...``) runs the command line."""

from slimformer.commands import main

if __name__ == "__main__":
    main()
