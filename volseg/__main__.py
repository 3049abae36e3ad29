"""Allow ``python -m volseg`` (also what ``torchrun -m volseg`` runs)."""

from volseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
