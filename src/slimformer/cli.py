"""The ``slimformer`` command, kept for ``slimformer.cli:main`` and old imports (it lives in ``commands``)."""

from slimformer.commands import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":  # `accelerate launch -m slimformer.cli finetune ...`
    main()
