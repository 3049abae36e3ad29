"""`volseg models`: list the registered networks, GAN and heads with parameter counts."""

from __future__ import annotations

import argparse
import json

HELP = "list the available networks with their parameter counts"
DESCRIPTION = (
    "List every registered segmentation network (usable as model.name in a config), the GAN "
    "generator/discriminator and the projection heads, each built with default arguments."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from volseg.models.registry import describe_models

    rows = list(describe_models())
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], indent=2))
        return 0
    print(f"{'kind':<13} {'name':<22} {'params':>12}  description")
    for row in rows:
        print(f"{row.kind:<13} {row.name:<22} {row.parameters:>12,}  {row.summary}")
    return 0
